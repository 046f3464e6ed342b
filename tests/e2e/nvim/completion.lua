-- Headless Neovim (0.11): start `subcoder serve`, wait until its sub-model is ready, open the
-- completion popup with omni-completion and print what it shows.
local py = assert(os.getenv('SUBCODER_PYTHON'))
local root = assert(os.getenv('SUBCODER_WORKSPACE'))
local settings = vim.json.decode(assert(os.getenv('SUBCODER_SETTINGS')))
local out = function(s) io.stdout:write(s .. '\n') end
vim.o.showmode = false
vim.opt.shortmess:append('c')

vim.cmd('edit ' .. root .. '/app/new.py')
vim.api.nvim_buf_set_lines(0, 0, -1, false, { 'def add(a, b):', '    return ' })

local state = nil
local client_id = vim.lsp.start({
  name = 'subcoder',
  cmd = { py, '-c', 'import sys; from subcoder.server.main import run; sys.exit(run(sys.argv[1:]))' },
  root_dir = root,
  init_options = settings,
  handlers = {
    ['subcoder/status'] = function(_, params) state = params.state end,
  },
})
if not vim.wait(180000, function() return state == 'ready' end, 100) then
  out('FAIL: sub-model not ready (state ' .. tostring(state) .. ')'); vim.cmd('cquit 1')
end
out('state: ' .. state)

vim.lsp.completion.enable(true, client_id, 0, { autotrigger = false })
vim.api.nvim_win_set_cursor(0, { 2, 11 })
vim.api.nvim_feedkeys(vim.keycode('A<C-x><C-o>'), 'n', false)
-- Poll from the event loop (not vim.wait): the typed keys must run for the popup to open.
local tries = 0
local function poll()
  local items = vim.fn.complete_info({ 'items' }).items
  tries = tries + 1
  if #items == 0 and tries < 150 then
    vim.defer_fn(poll, 100)
    return
  end
  for _, it in ipairs(items) do out('popup item: ' .. (it.abbr ~= '' and it.abbr or it.word) .. ' | word=' .. vim.inspect(it.word)) end
  vim.cmd('stopinsert')
  out(#items > 0 and 'RESULT: PASS' or 'RESULT: FAIL')
  vim.cmd(#items > 0 and 'qa!' or 'cquit 1')
end
vim.defer_fn(poll, 100)
