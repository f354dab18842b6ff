"""online: agents that act in gymnasium environments, built on pgcore (REINFORCE ... PPO, TRPO, SAC, TD3, DQN)."""
