"""A local scope during elaboration (a model body or one block call), and deterministic naming
of the nodes it creates."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from nexusdsl.elaborate.modules import FileScope
from nexusdsl.elaborate.shapes import AxisBindings
from nexusdsl.elaborate.values import Returned


@dataclass
class Frame:
    scope: FileScope  # the file whose definitions are visible here
    prefix: str  # hierarchical name prefix: "blocks.2.mlp"
    env: dict[str, Any] = field(default_factory=dict)
    axes: AxisBindings | None = None
    is_model: bool = False
    returned: Returned | None = None

    def qualify(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name


# Node names become attribute names of torch modules (the compiled model is an fx GraphModule
# whose submodules are its nodes), so a node cannot be called `forward`, `to` or `graph`.
# Every public attribute of fx.GraphModule / nn.Module instances, and the compiled model's own
# (tests/test_elaborate.py keeps this list equal to the installed torch's); names starting
# with `_` are torch's too.
TORCH_ATTRIBUTES = frozenset("""
    T_destination add_module add_submodule apply bfloat16 buffers call_super_init children code
    compile cpu cuda delete_all_unused_submodules delete_submodule double dump_patches eval
    extra_repr float forward get_buffer get_extra_state get_parameter get_submodule graph half
    ipu load_state_dict meta modules mtia named_buffers named_children named_modules
    named_parameters parameters print_readable recompile register_backward_hook register_buffer
    register_forward_hook register_forward_pre_hook register_full_backward_hook
    register_full_backward_pre_hook register_load_state_dict_post_hook
    register_load_state_dict_pre_hook register_module register_parameter
    register_state_dict_post_hook register_state_dict_pre_hook requires_grad_ set_extra_state
    set_submodule shape_env share_memory state_dict to to_empty to_folder train training type
    xpu zero_grad
    op
""".split())

# The compiled model's own attributes (compiler/lower/fx.py NexusModule): only a top-level
# node sits beside them; a nested one (`image_out.generate`) lives on a plain container module.
MODEL_ATTRIBUTES = frozenset({"fx", "input_names", "output_names", "generate"})


def taken_by_torch(name: str, prefix: str = "") -> bool:
    """Whether a node called `name` under `prefix` would collide with a torch attribute."""
    return (name.startswith("_") or name in TORCH_ATTRIBUTES
            or (not prefix and name in MODEL_ATTRIBUTES))


class Namer:
    """Unnamed nodes are named after their op, numbered per scope from the second on
    (`linear`, `linear_1`); a block named like a torch attribute starts at `_1` (`apply_1`).
    `as` names are taken as written and must be unique."""

    def __init__(self):
        self.used: set[str] = set()
        self.counts: dict[tuple[str, str], int] = {}
        self.shared: list[tuple[str, str]] = []  # (prefix of iteration i, prefix of iteration 0)

    def fresh(self, frame: Frame, base: str) -> str:
        key = (frame.prefix, base)
        while True:
            n = self.counts.get(key, 1 if taken_by_torch(base, frame.prefix) else 0)
            self.counts[key] = n + 1
            name = frame.qualify(base if n == 0 else f"{base}_{n}")
            if name not in self.used:
                self.used.add(name)
                return name

    def peek(self, frame: Frame, base: str) -> str:
        """The name `fresh(frame, base)` would give now, without taking it (a node whose
        inputs are named under it, as a moe's shared expert `moe.shared.…`, is made last)."""
        n = self.counts.get((frame.prefix, base),
                           1 if taken_by_torch(base, frame.prefix) else 0)
        while True:
            name = frame.qualify(base if n == 0 else f"{base}_{n}")
            if name not in self.used:
                return name
            n += 1

    def claim(self, name: str) -> bool:
        if name in self.used:
            return False
        self.used.add(name)
        return True

    def owner_of(self, name: str) -> str | None:
        """For a node inside `repeat N shared`, the node of iteration 0 whose parameters it uses."""
        owner = name
        for here, first in reversed(self.shared):
            if here != first and (owner == here or owner.startswith(here + ".")):
                owner = first + owner[len(here):]
        return owner if owner != name else None

    @contextmanager
    def sharing(self, here: str, first: str):
        self.shared.append((here, first))
        try:
            yield
        finally:
            self.shared.pop()
