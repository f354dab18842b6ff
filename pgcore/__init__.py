"""pgcore: the shared policy-gradient core. Pure tensor functions, each traceable to an equation.

Modules (import what you need, e.g. `from pgcore.advantages import gae`):
  advantages         discounted returns, reward-to-go, n-step returns, GAE, whitening, GRPO/RLOO group advantages
  policy_losses      REINFORCE, PPO (clip, adaptive-KL), GRPO (clip-higher, k3, loss aggregation), value loss,
                     entropy, SAC/DDPG/TD3/DQN targets, Polyak
  kl                 KL estimators k1/k2/k3, closed-form KLs, the halve/double rule, the proportional controller
  trust_region       conjugate gradient, Fisher-vector products, natural-gradient step, TRPO line search
  distributions      tanh-squashed Gaussian, token log-probs and entropy from logits
  preference_losses  Bradley-Terry reward loss, the DPO family, implicit rewards
  offline_losses     expectile loss, AWR weights, CQL regulariser and its Lagrange multiplier
  tabular            exact evaluation, policy/value/soft policy iteration: the oracle for the identity tests

Conventions: sequences are batch-first with time last ([..., T]); masks are 1 where valid; losses are returned
as scalars to minimise. `python -m pgcore` lists every public function with the equation it implements.
"""

MODULES = (
    "advantages",
    "policy_losses",
    "kl",
    "trust_region",
    "distributions",
    "preference_losses",
    "offline_losses",
    "tabular",
)
