"""Break one pgcore function at a time and check that the pgcore tests notice (mutation testing).

    python scripts/mutation_check.py            # run from the repository root; restores every file

Each mutation is a one-token change of the kind a real bug would be (a sign, a discount, a clip bound,
a missing mask). The script prints killed/SURVIVED per mutation and exits non-zero if any survived.
"""

import pathlib
import subprocess
import sys

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


def main() -> int:
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


if __name__ == "__main__":
    raise SystemExit(main())
