"""subcoder's pruning library: language-specific sub-models of causal code LLMs by Wanda pruning.

Wanda: Sun et al., "A Simple and Effective Pruning Approach for Large Language Models", arXiv 2306.11695.
Sub-models per programming language: Puccioni et al., arXiv 2501.05248.
"""

__version__ = "0.1.0"
