"""sparsity-pruning (stub while it is written)."""
from nexusdsl.compiler.passes.base import PatternPass


class SparsityPruning(PatternPass):
    name = "sparsity-pruning"
