"""online: agents that act in gymnasium environments (REINFORCE ... PPO, TRPO, SAC, TD3, DQN), built on pgcore.

    reins online --config recipes/online/<algo>-<env>.yaml [key=value ...]

Modules: `stage` (Config/train/main, `algo:` picks the agent), one module per algorithm (`reinforce`, `a2c`,
`ppo`, `trpo` (also NPG), `td3` (also DDPG), `sac`, `dqn`), the shared loops `onpolicy` / `offpolicy`, the run
harness `common` (envs, evaluation, checkpoints at segment boundaries) and `buffer` (replay). Networks, env
making, evaluation and the policy file they write come from `rl` (shared with offline/).
"""
