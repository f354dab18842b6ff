"""Preference losses: the Bradley-Terry reward-model loss, the DPO family (Rafailov et al. 2023, "Direct
preference optimization", eqs. 2 and 7), SimPO and the RPO NLL term, and KTO on unpaired feedback.

Margin, centering, cDPO/robust label smoothing, IPO, hinge and reference-free DPO follow the primary papers
cited below, with the semantics of TRL's DPOTrainer / RewardTrainer (``trl/trainer/dpo_trainer.py``,
``trl/trainer/reward_trainer.py``); SimPO with those of TRL's CPOTrainer (``loss_type="simpo"``) and KTO with
those of its KTOTrainer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["bradley_terry_loss", "dpo_loss", "implicit_reward", "chosen_nll_loss", "kto_reference_point",
           "kto_loss", "DPO_LOSS_TYPES"]

DPO_LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge", "simpo")


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    *,
    margin: torch.Tensor | float | None = None,
    center_coef: float = 0.0,
) -> tuple[torch.Tensor, dict]:
    """Reward-model loss -mean(log sigma(r_c - r_r - margin)) + center_coef * mean((r_c + r_r)^2).

    Rafailov et al. 2023, eq. 2: L_R(r_phi) = -E[log sigma(r_phi(x, y_w) - r_phi(x, y_l))] (the Bradley-Terry
    likelihood, Bradley & Terry 1952). ``margin`` (per pair or scalar): Touvron et al. 2023 (Llama 2), eq. 2.
    The centering term: Eisenstein et al. 2023 (arXiv 2312.09244), as TRL's ``center_rewards_coefficient``.

    info (detached scalars): accuracy (fraction with r_c > r_r, ties count as wrong), margin (mean r_c - r_r,
    without the margin offset), mean_reward / min_reward / max_reward over chosen and rejected together.
    """
    diff = chosen_rewards - rejected_rewards
    logits = diff if margin is None else diff - margin
    loss = -F.logsigmoid(logits).mean()
    if center_coef:
        loss = loss + center_coef * (chosen_rewards + rejected_rewards).square().mean()
    with torch.no_grad():
        both = torch.cat([chosen_rewards.detach().reshape(-1), rejected_rewards.detach().reshape(-1)])
        info = {
            "accuracy": (diff.detach() > 0).to(diff.dtype).mean(),
            "margin": diff.detach().mean(),
            "mean_reward": both.mean(),
            "min_reward": both.min(),
            "max_reward": both.max(),
        }
    return loss, info


def implicit_reward(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO implicit reward r_hat(x, y) = beta * log(pi_theta(y|x) / pi_ref(y|x)) (Rafailov et al. 2023, §4).

    Equals the true reward up to the prompt-only term beta * log Z(x) when pi_theta is the KL-regularised optimum
    (Rafailov et al. 2023, eqs. 4-5). Not detached (``dpo_loss`` returns detached copies for logging).
    """
    return beta * (policy_logps - ref_logps)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    reference_free: bool = False,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    simpo_gamma: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO-family losses ``[B]`` plus detached implicit rewards of chosen and rejected responses.

    With h = (log pi(y_w) - log pi(y_l)) - (log pi_ref(y_w) - log pi_ref(y_l)) (sequence log-probs, summed over
    response tokens) and eps = ``label_smoothing``:

    - "sigmoid": -(1 - eps) log sigma(beta h) - eps log sigma(-beta h). eps = 0 is the DPO loss (Rafailov et al.
      2023, eq. 7); eps > 0 is conservative DPO: Mitchell 2023 "cDPO" note, TRL <= 0.19 semantics (TRL 1.x silently
      ignores eps here).
    - "robust": (-(1 - eps) log sigma(beta h) + eps log sigma(-beta h)) / (1 - 2 eps), 0 <= eps < 0.5
      (Chowdhury et al. 2024, rDPO), unbiased under label-flip rate eps.
    - "ipo": (h - 1 / (2 beta))^2 (Azar et al. 2023, eq. 17). When ``chosen_lengths`` and
      ``rejected_lengths`` (completion token counts) are given, every log-prob (policy and reference) is first
      divided by its completion length, i.e. per-token averaged log-ratios (TRL; "confirmed with the IPO
      authors"). Lengths are used by "ipo" only.
    - "hinge": relu(1 - beta h) (Zhao et al. 2023, SLiC / Liu et al. 2023, RSO), beta = 1/margin.
    - "simpo": with z = beta (log pi(y_w) / |y_w| - log pi(y_l) / |y_l|) - gamma (``simpo_gamma``),
      -(1 - eps) log sigma(z) - eps log sigma(-z) (Meng et al. 2024, "SimPO", eq. 6; eps as TRL's CPOTrainer).
      No reference: the ``ref_*`` arguments are ignored, and the lengths (completion token counts) are required.
      The rewards are SimPO's: beta times the length-averaged policy log-probs.

    ``reference_free``: reference log-probs are treated as 0 (Mitchell's reference implementation), in the loss
    and in the returned rewards. Rewards are beta * (policy - ref) sequence log-probs (``implicit_reward``),
    detached, for every loss type (TRL reports length-averaged rewards for IPO; we keep one definition).
    """
    _check_dpo_args(loss_type, label_smoothing, chosen_lengths, rejected_lengths)
    if loss_type == "simpo":
        return _simpo(policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths, beta=beta,
                      gamma=simpo_gamma, label_smoothing=label_smoothing)

    if reference_free:
        ref_chosen_logps = torch.zeros_like(policy_chosen_logps)
        ref_rejected_logps = torch.zeros_like(policy_rejected_logps)

    chosen_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_ratio = policy_rejected_logps - ref_rejected_logps
    if loss_type != "ipo":
        chosen_lengths = rejected_lengths = None  # lengths are used by "ipo" only
    h = _log_ratio_gap(chosen_ratio, rejected_ratio, chosen_lengths, rejected_lengths)
    losses = _dpo_losses_of_gap(h, beta=beta, loss_type=loss_type, eps=label_smoothing)

    chosen_rewards = implicit_reward(policy_chosen_logps, ref_chosen_logps, beta).detach()
    rejected_rewards = implicit_reward(policy_rejected_logps, ref_rejected_logps, beta).detach()
    return losses, chosen_rewards, rejected_rewards


def _check_dpo_args(loss_type: str, label_smoothing: float, chosen_lengths, rejected_lengths) -> None:
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"dpo_loss: unknown loss_type {loss_type!r}; expected one of {DPO_LOSS_TYPES}")
    if loss_type in ("sigmoid", "robust", "simpo") and not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"dpo_loss: label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("dpo_loss: pass both chosen_lengths and rejected_lengths, or neither")


def _log_ratio_gap(chosen_ratio, rejected_ratio, chosen_lengths, rejected_lengths) -> torch.Tensor:
    """h = chosen log-ratio - rejected log-ratio, each divided by its completion length when lengths are given."""
    if chosen_lengths is None:
        return chosen_ratio - rejected_ratio
    # Dividing each sequence's log-probs by its length divides its log-ratio by the same length.
    chosen_lr = chosen_ratio / chosen_lengths.to(chosen_ratio.dtype).clamp_min(1)
    rejected_lr = rejected_ratio / rejected_lengths.to(rejected_ratio.dtype).clamp_min(1)
    return chosen_lr - rejected_lr


def _dpo_losses_of_gap(h: torch.Tensor, *, beta: float, loss_type: str, eps: float) -> torch.Tensor:
    """The per-pair loss of the log-ratio gap h for the reference-based types (formulas in ``dpo_loss``)."""
    if loss_type == "sigmoid":
        losses = -(1.0 - eps) * F.logsigmoid(beta * h)
        if eps:
            losses = losses - eps * F.logsigmoid(-beta * h)
        return losses
    if loss_type == "robust":
        return (-(1.0 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1.0 - 2.0 * eps)
    if loss_type == "ipo":
        return (h - 1.0 / (2.0 * beta)).square()
    return torch.relu(1.0 - beta * h)  # hinge


def _simpo(policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths, *, beta: float,
           gamma: float, label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO (``dpo_loss`` with loss_type "simpo"): the length-averaged log-likelihood is the reward."""
    if chosen_lengths is None:
        raise ValueError("dpo_loss: loss_type 'simpo' needs chosen_lengths and rejected_lengths")
    chosen_avg = policy_chosen_logps / chosen_lengths.to(policy_chosen_logps.dtype).clamp_min(1)
    rejected_avg = policy_rejected_logps / rejected_lengths.to(policy_rejected_logps.dtype).clamp_min(1)
    z = beta * (chosen_avg - rejected_avg) - gamma
    losses = -(1.0 - label_smoothing) * F.logsigmoid(z)
    if label_smoothing:
        losses = losses - label_smoothing * F.logsigmoid(-z)
    return losses, (beta * chosen_avg).detach(), (beta * rejected_avg).detach()


def chosen_nll_loss(chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    """The RPO term: the negative log-likelihood of the chosen completions per token,
    -sum_i log pi(y_w,i | x_i) / sum_i |y_w,i| over the batch (a scalar).

    Pang et al. 2024 ("Iterative reasoning preference optimization", eq. 3) add alpha times an NLL of the
    chosen response to the DPO loss. The normalisation is TRL's (``rpo_alpha`` in TRL <= 0.x, loss_type "sft"
    in 1.x): the mean over every chosen completion token of the batch, so long completions weigh more than in
    the paper's per-sequence length normalisation. ``chosen_logps`` are sequence sums of token log-probs.
    """
    return -chosen_logps.sum() / chosen_lengths.to(chosen_logps.dtype).sum().clamp_min(1)


def kto_reference_point(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor, *, reduce_mean=None) -> torch.Tensor:
    """KTO's reference point z0 = max(0, mean_j [log pi(y_j'|x_j) - log pi_ref(y_j'|x_j)]), detached (a scalar).

    Ethayarajh et al. 2024 ("KTO", eq. 7 and section 4.1): z0 estimates KL(pi || pi_ref) from mismatched pairs
    (x_j, y_j') of the batch, y_j' another example's completion, and no gradient flows through it.
    ``reduce_mean`` averages the per-process estimate over processes (TRL: gather the per-device means, average,
    then clamp at 0), so every process uses one z0.
    """
    kl = (policy_kl_logps.detach() - ref_kl_logps.detach()).mean()
    if reduce_mean is not None:
        kl = reduce_mean(kl)
    return kl.clamp(min=0)


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor | float,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example KTO losses ``[B]`` (weighted) and the detached implicit rewards beta * log(pi / pi_ref) ``[B]``.

    Ethayarajh et al. 2024, eq. 7, with r = log pi(y|x) - log pi_ref(y|x) (sequence log-probs) and z0 = ``kl``
    (``kto_reference_point``): a desirable example (``desirable`` True) costs
    lambda_D (1 - sigma(beta (r - z0))), an undesirable one lambda_U (1 - sigma(beta (z0 - r))), lambda_D =
    ``desirable_weight`` and lambda_U = ``undesirable_weight``: the paper's lambda_y - v(x, y), as TRL computes
    it. The batch loss is the plain mean of these (TRL's ``losses.nanmean()``), not a weight-normalised mean.
    """
    logratio = policy_logps - ref_logps
    kl = torch.as_tensor(kl, dtype=logratio.dtype, device=logratio.device)
    desirable = desirable.to(torch.bool)
    value = torch.where(desirable, torch.sigmoid(beta * (logratio - kl)), torch.sigmoid(beta * (kl - logratio)))
    weight = torch.where(desirable, torch.full_like(logratio, desirable_weight),
                         torch.full_like(logratio, undesirable_weight))
    return weight * (1.0 - value), (beta * logratio).detach()
