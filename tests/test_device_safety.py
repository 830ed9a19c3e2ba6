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


# ----------------------------------------------------------------------------- the tutorials' own model calls

BLOCK_TENSORS = frozenset({"input_ids", "attention_mask", "labels"})


def _moves_to_a_device(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "to"
               for n in ast.walk(node))


class _BatchReader(ast.NodeVisitor):
    """Walks statements in source order, remembering which names hold a CPU Blocks tensor (assigned from
    `x.input_ids[...]` and the like, or from another such name, without a `.to(...)`)."""

    def __init__(self, where: str, tainted: set[str]):
        self.where, self.tainted, self.found = where, tainted, []

    def _cpu_block_tensor(self, node: ast.AST) -> bool:
        uses = any((isinstance(n, ast.Attribute) and n.attr in BLOCK_TENSORS)
                   or (isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in self.tainted)
                   for n in ast.walk(node))
        return uses and not _moves_to_a_device(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        holds = self._cpu_block_tensor(node.value)
        for target in node.targets:
            for name in (n.id for n in ast.walk(target) if isinstance(n, ast.Name)):
                (self.tainted.add if holds else self.tainted.discard)(name)

    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr == "batches" and not any(k.arg == "device" for k in node.keywords):
            self.found.append(f"{self.where}:{node.lineno}: .batches(...) without device=")
        if isinstance(f, ast.Name) and f.id == "model":
            if any(self._cpu_block_tensor(arg) for arg in [*node.args, *(k.value for k in node.keywords)]):
                self.found.append(f"{self.where}:{node.lineno}: model(...) gets a CPU Blocks tensor")
        self.generic_visit(node)


def cpu_batches_fed_to_the_model(source: str, where: str, tainted: set[str] | None = None) -> list[str]:
    """Where a tutorial (or a shipped solution) would hand the model CPU tensors: `Blocks.batches(...)`
    without `device=`, or `model(...)` given a Blocks tensor (`x.input_ids[...]`, directly or through a
    name assigned from one) that is never `.to(...)`'d. The blocks live on the CPU, so either fails on the
    first GPU run ("Expected all tensors to be on the same device"), which the CPU suite cannot see.
    `tainted` carries the names that hold such a tensor from one cell of a notebook to the next."""
    code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
    reader = _BatchReader(where, set() if tainted is None else tainted)
    reader.visit(ast.parse(code))
    return reader.found


def _tutorial_sources():
    import json

    from layerq_nb.exercises.solutions import nb00, nb01, nb02, nb03, nb04, nb05, nb06, nb07
    root = PACKAGE.parent / "notebooks"
    for path in sorted(root.glob("[0-9][0-9]_*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] == "code":
                yield path.name, f"{path.name} cell {i}", "".join(cell["source"])
    for module in (nb00, nb01, nb02, nb03, nb04, nb05, nb06, nb07):
        for key, text in module.SOLUTIONS.items():
            yield f"solution {key}", f"solution {key}", text


def test_no_tutorial_hands_the_model_cpu_batches():
    sources = list(_tutorial_sources())
    assert len(sources) > 100
    tainted: dict[str, set] = {}          # per notebook, in cell order: a name set in one cell is used later
    found = [problem for unit, where, text in sources
             for problem in cpu_batches_fed_to_the_model(text, where, tainted.setdefault(unit, set()))]
    assert not found, "\n".join(found)


def test_no_package_code_hands_the_model_cpu_batches():
    found = [problem for path in sorted(PACKAGE.rglob("*.py"))
             for problem in cpu_batches_fed_to_the_model(path.read_text(encoding="utf-8"),
                                                         str(path.relative_to(PACKAGE.parent)))]
    assert not found, "\n".join(found)


def test_the_batch_check_bites_and_lets_moved_tensors_through():
    bad = ("for batch in blocks.batches(4):\n    model(**batch)\n"
           "loss = model(input_ids=train.input_ids[i:i + 1], labels=train.labels[i:i + 1]).loss\n")
    assert [p.split(": ", 1)[1] for p in cpu_batches_fed_to_the_model(bad, "x")] == [
        ".batches(...) without device=", "model(...) gets a CPU Blocks tensor"]
    good = ("%time x = 1\nfor batch in blocks.batches(4, device=model.device):\n    model(**batch)\n"
            "loss = model(input_ids=train.input_ids[:1].to(model.device)).loss\n")
    assert cpu_batches_fed_to_the_model(good, "x") == []


def test_the_batch_check_follows_a_blocks_tensor_through_names_and_cells():
    tainted: set = set()
    first = "ids = train.input_ids[:2]\nsame = ids\nmoved = ids.to(model.device)\n"
    assert cpu_batches_fed_to_the_model(first, "cell 1", tainted) == []
    later = "model(input_ids=same)\nmodel(moved)\nsame = moved\nmodel(same)\n"
    assert cpu_batches_fed_to_the_model(later, "cell 2", tainted) == ["cell 2:1: model(...) gets a CPU Blocks tensor"]
