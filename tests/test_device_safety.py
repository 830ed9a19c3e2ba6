"""Every torch factory call in the package names its device, or is marked CPU on purpose (issue 20, item 7).

A tensor built without `device=` lands on the CPU; mixed with a model's tensors on CUDA or MPS it fails
("Expected all tensors to be on the same device") the first time that line runs on a GPU, which the CPU
test suite never sees. So the rule is read from the source: every call to a torch factory
(`torch.zeros(...)`, `torch.eye(...)`, ...) passes `device=`, or is a `*_like` (which copies the device of
its argument), or its line (or the line above it) carries a `# cpu on purpose: <why>` comment. A module
whose tensors are all small CPU data (the exercises' hidden instances) says so once, on a line of its
own: `# cpu on purpose (module): <why>`.
"""
from __future__ import annotations

import ast
from pathlib import Path

import layerq_nb

PACKAGE = Path(layerq_nb.__file__).parent
MARKER = "cpu on purpose"
MODULE_MARKER = "# cpu on purpose (module):"

# torch's tensor factories that take a `device=` keyword (the `*_like` ones copy their argument's)
FACTORIES = frozenset({
    "tensor", "as_tensor", "asarray", "scalar_tensor", "sparse_coo_tensor",
    "zeros", "ones", "empty", "empty_strided", "full", "eye", "arange", "range", "linspace", "logspace",
    "rand", "randn", "randint", "randperm", "normal", "tril_indices", "triu_indices",
    "Generator",      # a CPU generator cannot drive a CUDA draw
})


def _is_torch(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id == "torch"


def _factory_name(call: ast.Call) -> str | None:
    """'zeros' for torch.zeros(...), None for anything else (methods, *_like, other modules)."""
    f = call.func
    if isinstance(f, ast.Attribute) and _is_torch(f.value) and f.attr in FACTORIES:
        return f.attr
    return None


def unsafe_factory_calls(source: str, filename: str = "<source>") -> list[str]:
    """'file:line: torch.name(...)' for every torch factory call naming no device and not marked."""
    lines = source.splitlines()
    if any(line.strip().startswith(MODULE_MARKER) for line in lines):
        return []
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name = _factory_name(node)
        if name is None or any(k.arg == "device" for k in node.keywords):
            continue
        if any(k.arg is None for k in node.keywords):      # **options may carry the device
            continue
        first, last = node.lineno, getattr(node, "end_lineno", node.lineno)
        nearby = lines[max(first - 2, 0):last]
        if any(MARKER in line for line in nearby):
            continue
        found.append((first, f"{filename}:{first}: torch.{name}(...) names no device"))
    return [message for _, message in sorted(found)]


def test_no_package_factory_call_leaves_the_device_unnamed():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        problems += unsafe_factory_calls(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent)))
    assert not problems, ("torch factory calls without device= (pass device=..., use *_like, or add "
                          f"'# {MARKER}: <why>' to the line):\n" + "\n".join(problems))


def test_the_check_bites_on_an_unmarked_factory_call():
    bad = ("import torch\n"
           "def damp(H):\n"
           "    return H + torch.eye(H.shape[0], dtype=H.dtype)\n"
           "def count(n):\n"
           "    return torch.tensor([n], dtype=torch.float64)\n")
    assert unsafe_factory_calls(bad) == ["<source>:3: torch.eye(...) names no device",
                                         "<source>:5: torch.tensor(...) names no device"]


def test_the_check_accepts_device_like_and_marked_calls():
    good = ("import torch\n"
            "def damp(H):\n"
            "    a = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)\n"
            "    b = torch.zeros_like(H)\n"
            "    c = H.new_zeros(3)\n"
            "    d = torch.arange(\n"
            "        5,\n"
            "        device=H.device)\n"
            "    e = torch.tensor([1.0])  # cpu on purpose: a host-side scalar for printing\n"
            "    # cpu on purpose: seeds a CPU generator\n"
            "    f = torch.randn(4)\n"
            "    g = torch.full((2,), 1.0, **opts)\n"
            "    return a, b, c, d, e, f, g\n")
    assert unsafe_factory_calls(good) == []


def test_a_module_marker_covers_the_whole_module_only_on_its_own_line():
    body = "import torch\nx = torch.zeros(3)\n"
    assert unsafe_factory_calls("# cpu on purpose (module): hidden instances are small CPU data\n" + body) == []
    assert unsafe_factory_calls('"""mentions # cpu on purpose (module): in a docstring"""\n' + body) == \
        ["<source>:3: torch.zeros(...) names no device"]
