"""online: agents that act in gymnasium environments (REINFORCE ... PPO, TRPO, SAC, TD3, DQN), built on pgcore.

    reins online --config recipes/online/<algo>-<env>.yaml [key=value ...]

Modules: `stage` (Config/train/main, `algo:` picks the agent), one module per algorithm (`reinforce`, `a2c`,
`ppo`, `trpo` (also NPG), `td3` (also DDPG), `sac`, `dqn`), the shared loops `onpolicy` / `offpolicy`, the run
harness `common` (envs, evaluation, checkpoints at segment boundaries), `envs` (creation, space checks,
running normalisation, `evaluate`), `buffer` (replay), `nets` (every actor and critic, offline/'s too) and
`policy_io` (the one `policy.pt` format, written by online and offline stages alike and loaded to act with
`load_policy(path).act(obs)`).
"""
