import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { LineTail } from '../../src/common/stderrTail';

test('keeps the last lines, oldest first, and drains', () => {
    const tail = new LineTail(3);
    ['a', 'b', 'c', 'd'].forEach((l) => tail.push(l));
    assert.deepEqual(tail.drain(), ['b', 'c', 'd']);
    assert.deepEqual(tail.drain(), []);
});

test('progress bars keep their last state; blank lines are dropped', () => {
    const tail = new LineTail();
    tail.push('Loading:   0%|\rLoading:  50%|\rLoading: 100%|\r');
    tail.push('   ');
    tail.push('Traceback (most recent call last):');
    assert.deepEqual(tail.drain(), ['Loading: 100%|', 'Traceback (most recent call last):']);
});
