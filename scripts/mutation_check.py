"""Break the code one small change at a time and check that the tests notice (mutation testing).

    python scripts/mutation_check.py                  # the curated pgcore mutations against tests/pgcore
    python scripts/mutation_check.py --random 20      # 20 random mutants of each module in MODULES
    python scripts/mutation_check.py --random 20 --module pipelines/ppo.py --seed 1

Curated mode: each mutation is a one-token change of the kind a real bug would be (a sign, a discount, a clip
bound, a missing mask); it prints killed/SURVIVED per mutation and exits non-zero if any survived.

Random mode: single-point mutants of a module (an arithmetic operator, a comparison, `and`/`or`, a `not`, a
numeric or boolean constant; dataclass field defaults and module-level UPPER_CASE tables such as published
presets are left alone: they are configuration, not logic), drawn
with a seed, each run against the test files that cover the module (MODULES). The work happens in a copy of the
repository in a temporary directory, so the working tree is never touched and other work can go on beside it.
Prints each mutant, the score per module, and exits non-zero if a module kills fewer than --target of its mutants.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import time

MUTATIONS = [
    ("pgcore/advantages.py", "delta = r + gamma * not_term * nv - v", "delta = r + gamma * nv - v"),
    ("pgcore/advantages.py", "coef = gamma * lam * cont", "coef = gamma * cont"),
    ("pgcore/advantages.py", "cont = not_term if trunc is None else not_term * (1.0 - trunc.expand(shape))",
     "cont = not_term"),
    ("pgcore/policy_losses.py", "1.0 - clip_eps, 1.0 + clip_eps", "1.0 - clip_eps, 1.0 + 2 * clip_eps"),
    ("pgcore/policy_losses.py", "torch.minimum(q1, q2)", "torch.maximum(q1, q2)"),
    ("pgcore/advantages.py", "(r.sum(-1, keepdim=True) - r) / (G - 1)", "(r.sum(-1, keepdim=True) - r) / G"),
    ("pgcore/advantages.py", "adv = adv / (r.std(-1, keepdim=True) + eps)", "adv = adv / (r.std(-1, keepdim=True))"),
    ("pgcore/advantages.py", "flat = (r == r[:, :1]).all(-1, keepdim=True)", "flat = (r != r).all(-1, keepdim=True)"),
    ("pgcore/policy_losses.py", "torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)",
     "torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_low)"),
    ("pgcore/policy_losses.py", "per_token = per_token + beta * kl", "per_token = per_token + kl"),
    ("pgcore/policy_losses.py", "per_seq = lm.sum(-1) / m.sum(-1).clamp_min(1.0)",
     "per_seq = lm.sum(-1) / m.sum().clamp_min(1.0)"),
    ("pgcore/policy_losses.py", "return lm.sum() / (max(float(n_seq), 1.0) * max_length)",
     "return lm.sum() / max(float(n_seq), 1.0)"),
    ("pgcore/policy_losses.py", "/ valid.sum(-1, keepdim=True).clamp_min(1)", "/ lr.shape[-1]"),
    ("pgcore/policy_losses.py", "return m * keep.reshape(-1, *([1] * (m.dim() - 1)))", "return m"),
    ("pgcore/advantages.py", ".clamp(0.0, float(buffer_len))", ".clamp(0.0)"),
    ("pgcore/kl.py", "beta / 2", "beta / 3"),
    ("pgcore/preference_losses.py", "label_smoothing", "0 * label_smoothing"),
    ("pgcore/trust_region.py", "2.0 * max_kl", "max_kl"),
    ("pgcore/distributions.py", "F.softplus(-2.0 * pre_tanh)", "F.softplus(-1.0 * pre_tanh)"),
    ("pgcore/tabular.py", "gamma *", "0.99 * gamma *"),
    ("pgcore/offline_losses.py", "diff.new_tensor(1.0 - tau), diff.new_tensor(tau)",
     "diff.new_tensor(tau), diff.new_tensor(1.0 - tau)"),
    ("pgcore/offline_losses.py", "z = z.clamp(max=math.log(max_weight))",
     "z = z.clamp(max=math.log(max_weight) + 1)"),
]

# Each module with the in-process test files that cover it (subprocess and multi-process tests are left out:
# they are slow, and a mutant in the copy would not reach a launched interpreter's imports any differently).
P = "tests/pipelines/"
MODULES = {
    "pipelines/evaluation.py": [P + "test_stage_oracles.py", P + "test_generation_eval.py",
                                P + "test_score_texts_eos.py"],
    "pipelines/ppo.py": [P + "test_option_bounds.py", P + "test_ppo_options.py", P + "test_stage_oracles.py",
                         P + "test_ppo.py", P + "test_ppo_stage.py"],
    "pipelines/rollout.py": [P + "test_ppo.py", P + "test_ppo_options.py", P + "test_stage_oracles.py",
                                 P + "test_ppo_stage.py"],
    "pipelines/reward_model.py": [P + "test_option_bounds.py", P + "test_stage_oracles.py", P + "test_lm_learning.py",
                            P + "test_resume_weights.py"],
    "pipelines/grpo.py": [P + "test_option_bounds.py", P + "test_grpo_options.py", P + "test_grpo_stage.py"],
    "offline/iql.py": ["tests/offline/test_option_bounds.py", "tests/offline/test_losses.py",
                       "tests/offline/test_options.py", "tests/offline/test_stage.py"],
    "offline/cql.py": ["tests/offline/test_option_bounds.py", "tests/offline/test_losses.py",
                       "tests/offline/test_options.py", "tests/offline/test_stage.py"],
}
COPIED = ("pgcore", "reins", "online", "offline", "pipelines", "tests", "recipes", "pyproject.toml")

SWAP_BIN = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
            ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult}
SWAP_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}


def _skipped_spans(tree: ast.Module) -> list[tuple[int, int]]:
    """Line spans left unmutated: docstrings, dataclass `field(...)` defaults and module-level UPPER_CASE tables
    (published presets, names): configuration, not logic."""
    spans = [(node.lineno, node.end_lineno) for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
             and all(getattr(t, "id", "").isupper() for t in getattr(node, "targets", [getattr(node, "target", None)]))]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "field":
            spans.append((node.lineno, node.end_lineno))
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(node) is not None:
            spans.append((node.body[0].lineno, node.body[0].end_lineno))
    return spans


def _variants(node: ast.AST) -> list[ast.AST]:
    """The single-point changes of one node (each a mutated copy)."""
    out = []
    if isinstance(node, ast.BinOp) and type(node.op) in SWAP_BIN:
        out.append(ast.BinOp(node.left, SWAP_BIN[type(node.op)](), node.right))
    elif isinstance(node, ast.AugAssign) and type(node.op) in SWAP_BIN:
        out.append(ast.AugAssign(node.target, SWAP_BIN[type(node.op)](), node.value))
    elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in SWAP_CMP:
        out.append(ast.Compare(node.left, [SWAP_CMP[type(node.ops[0])]()], node.comparators))
    elif isinstance(node, ast.BoolOp):
        out.append(ast.BoolOp(ast.Or() if isinstance(node.op, ast.And) else ast.And(), node.values))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
        out.append(node.operand)
    elif isinstance(node, ast.Constant) and type(node.value) is bool:
        out.append(ast.Constant(not node.value))
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
        out.append(ast.Constant(node.value + 1 if type(node.value) is int else node.value * 2 + 0.5))
    return out


def mutants(src: str) -> list[tuple[int, int, str, str]]:
    """Every single-point mutant of `src`: (first line, last line, description, mutated source)."""
    tree = ast.parse(src)
    skip = _skipped_spans(tree)
    lines = src.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    found = []
    for node in ast.walk(tree):
        last = getattr(node, "end_lineno", None)
        if not hasattr(node, "lineno") or any(a <= node.lineno <= b for a, b in skip):
            continue
        for new in _variants(node):
            a = starts[node.lineno - 1] + len(lines[node.lineno - 1].encode()[:node.col_offset].decode())
            b = starts[node.end_lineno - 1] + len(lines[node.end_lineno - 1].encode()[:node.end_col_offset].decode())
            old_text, new_text = src[a:b], ast.unparse(ast.fix_missing_locations(copy.deepcopy(new)))
            if isinstance(node, ast.AugAssign):
                new_text = new_text.strip()
            if "\n" in old_text or len(old_text) > 120:   # a multi-line statement: name it by its operator only
                desc = f"{type(node).__name__} -> {ast.dump(getattr(new, 'op', new))[:40]}"
            else:
                desc = f"{old_text!r} -> {new_text!r}"
            mutated = src[:a] + new_text + src[b:]
            try:
                compile(mutated, "<mutant>", "exec")
            except SyntaxError:
                continue
            if mutated != src:
                found.append((node.lineno, last, desc, mutated))
    return found


# A pytest plugin for the unmutated run: which tests execute each line of the module under test (lines run at
# import or collection are marked "*": every test depends on them). A mutant then runs only the tests that
# execute its lines; one on a line no test executes survives without a run.
TRACER = """
import json, os, sys, threading
TARGET, OUT, current, hits = os.environ["MUTATION_TARGET"], os.environ["MUTATION_HITS"], ["*"], {}
def _local(frame, event, arg):
    if event == "line":
        hits.setdefault(frame.f_lineno, set()).add(current[0])
    return _local
def _global(frame, event, arg):
    if frame.f_code.co_filename == TARGET:
        hits.setdefault(frame.f_lineno, set()).add(current[0])
        return _local
    return None
sys.settrace(_global)
threading.settrace(_global)
def pytest_runtest_setup(item):
    current[0] = item.nodeid
def pytest_sessionfinish(session):
    sys.settrace(None)
    json.dump({str(k): sorted(v) for k, v in hits.items()}, open(OUT, "w"))
"""


def _pytest(root: pathlib.Path, tests: list[str], timeout: float, env_extra: dict | None = None,
            plugin: str | None = None) -> str:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONDONTWRITEBYTECODE": "1",
           **(env_extra or {})}
    extra = ["-p", plugin] if plugin else []
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *extra, *tests],
                           cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "killed (timeout)"
    return "SURVIVED" if r.returncode == 0 else ("killed" if r.returncode == 1 else f"killed (exit {r.returncode})")


def _covering(hits: dict, first: int, last: int, tests: list[str]) -> list[str]:
    """The tests that execute any of lines first..last (all of `tests` when module-level code is involved)."""
    ids = {t for line in range(first, last + 1) for t in hits.get(str(line), [])}
    return tests if "*" in ids else sorted(ids)


def random_mode(args) -> int:
    repo = pathlib.Path(__file__).resolve().parents[1]
    modules = args.module or list(MODULES)
    scores = {}
    with tempfile.TemporaryDirectory(prefix="reins-mutants-") as tmp:
        root = pathlib.Path(tmp)
        for name in COPIED:
            (shutil.copytree if (repo / name).is_dir() else shutil.copy)(repo / name, root / name)
        (root / "_mutation_tracer.py").write_text(TRACER)
        for module in modules:
            tests = [t for t in (args.tests or MODULES[module]) if (root / t).is_file()]
            hits_file = root / "hits.json"
            t0 = time.monotonic()
            base = _pytest(root, tests, timeout=3600, plugin="_mutation_tracer",
                           env_extra={"MUTATION_TARGET": str(root / module), "MUTATION_HITS": str(hits_file)})
            base_s = time.monotonic() - t0
            if base != "SURVIVED":
                print(f"{module}: the covering tests fail without a mutant ({base}); skipped", flush=True)
                continue
            hits = json.loads(hits_file.read_text())
            budget = 4 * base_s + 120   # a mutant that makes the tests hang counts as killed; load is not one
            print(f"{module}: covering tests pass in {base_s:.0f} s (traced)", flush=True)
            src = (root / module).read_text()
            pool = mutants(src)
            chosen = sorted(random.Random(f"{args.seed}:{module}").sample(pool, min(args.random, len(pool))))
            killed = 0
            for first, last, desc, mutated in chosen:
                run = _covering(hits, first, last, tests)
                if not run:
                    status = "SURVIVED (no test runs it)"
                else:
                    (root / module).write_text(mutated)
                    try:
                        status = _pytest(root, run, timeout=budget)
                    finally:
                        (root / module).write_text(src)
                killed += status.startswith("killed")
                print(f"{status:<16} {module}:{first}: {desc}  [{len(run)} tests]", flush=True)
            scores[module] = (killed, len(chosen), len(pool))
            print(f"== {module}: {killed}/{len(chosen)} killed ({killed / max(len(chosen), 1):.0%}) of "
                  f"{len(pool)} possible mutants; tests: {' '.join(tests)}", flush=True)
    for module, (k, n, total) in scores.items():
        print(f"{module:<28} {k:>3}/{n:<3} {k / max(n, 1):5.0%}  (of {total} possible)")
    return 1 if any(k < args.target * n for k, n, _ in scores.values()) else 0


def curated_mode() -> int:
    survived = 0
    for path, old, new in MUTATIONS:
        p = pathlib.Path(path)
        src = p.read_text()
        if old not in src:
            print(f"skip (pattern gone): {path}: {old}")
            continue
        p.write_text(src.replace(old, new, 1))
        try:
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "tests/pgcore", "-p", "no:cacheprovider"],
                               capture_output=True, text=True)
        finally:
            p.write_text(src)
        status = "killed" if r.returncode != 0 else "SURVIVED"
        survived += status == "SURVIVED"
        print(f"{status:<9} {path}: {old!r} -> {new!r}")
    print(f"{survived} of {len(MUTATIONS)} mutations survived")
    return 1 if survived else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--random", type=int, default=0, help="random mutants per module (0: the curated pgcore list)")
    ap.add_argument("--module", action="append", choices=sorted(MODULES), help="only this module (repeatable)")
    ap.add_argument("--seed", type=int, default=0, help="which random mutants are drawn")
    ap.add_argument("--tests", nargs="+", help="covering test files instead of MODULES' (with one --module)")
    ap.add_argument("--target", type=float, default=0.8, help="least share of mutants each module must kill")
    args = ap.parse_args()
    return random_mode(args) if args.random else curated_mode()


if __name__ == "__main__":
    raise SystemExit(main())
