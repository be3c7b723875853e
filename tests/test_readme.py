"""The README's promises: its loss example runs, and its two commands exist as written."""

import re
from pathlib import Path

import torch

from cbnotes.models import resnet_cifar

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block(after_heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(after_heading) :]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_training_loop_example_runs_and_produces_gradients():
    code = _python_block("## Use the loss in your own training loop")
    assert len(code.strip().splitlines()) <= 6
    model = resnet_cifar(depth=8, num_classes=10, base_width=4)
    namespace = {
        "model": model,
        "images": torch.randn(4, 3, 16, 16),
        "labels": torch.tensor([0, 3, 9, 9]),
        "train_counts": [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50],
        "device": "cpu",
    }
    exec(compile(code, str(README), "exec"), namespace)
    assert torch.isfinite(namespace["loss"])
    assert model.fc.weight.grad is not None


def _python_blocks(after_heading: str, until: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(after_heading) : text.index(until)]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def test_the_later_methods_and_multi_label_examples_run():
    _first, methods, multi_label = _python_blocks("## Use the loss", "## The methods, in one")
    counts = [50, 20, 5]
    namespace = {
        "train_counts": counts,
        "logits": torch.randn(2, 3, requires_grad=True),
        "cosines": torch.rand(2, 3) * 2 - 1,
        "labels": torch.tensor([0, 2]),
    }
    exec(compile(methods, str(README), "exec"), namespace)
    exec(compile(multi_label, str(README), "exec"), namespace)
    loss = namespace["loss"]
    alpha = namespace["class_weights"](counts, "effective", 0.999)
    rows = torch.nn.functional.binary_cross_entropy_with_logits(
        namespace["logits"], namespace["targets"], reduction="none"
    )
    p = torch.sigmoid(namespace["logits"])
    pt = torch.where(namespace["targets"] == 1, p, 1 - p)
    per_row = ((1 - pt) ** 2 * rows).sum(dim=1)
    weights = torch.stack([(alpha[0] + alpha[2]) / 2, torch.tensor(1.0)])
    torch.testing.assert_close(loss, (weights * per_row).sum() / 2)


def test_the_two_commands_exist():
    text = README.read_text(encoding="utf-8")
    root = README.parent
    for command in ("bash scripts/main.sh", "bash scripts/test.sh"):
        assert command in text
        assert (root / command.split()[1]).is_file()
    assert "bash scripts/test.sh" in (root / ".ci" / "run").read_text(encoding="utf-8")


def test_the_results_block_is_what_the_committed_study_gives_now():
    import notebooks as nbtools  # scripts/, importable through conftest.py

    block = nbtools.results_block("results/cpu-study", "cpu")
    assert block.count("\n| Fashion-MNIST-LT |") == 6
    assert block in README.read_text(encoding="utf-8"), "README is stale: notebooks.py sync"
    methods = nbtools.results_block("results/methods-study", "cpu-methods")
    assert methods.count("\n| Fashion-MNIST-LT |") >= 2  # at least the two baselines
    assert "| softmax |" in methods
    assert methods in README.read_text(encoding="utf-8"), "README is stale: notebooks.py sync"
    figure = re.search(r"!\[[^]]*\]\((results/[^)]+\.png)\)", README.read_text(encoding="utf-8"))
    assert (README.parent / figure.group(1)).is_file()
