"""rl: what online/ and offline/ agents are both made of, below both of them.

Modules: `nets` (every actor and critic: their specs, `build_actor`, `EnsembleQ`, `ValueNet`), `agent` (the
base class that registers an agent's networks and optimisers and writes the optimiser step, schedulers and
`state_dict` once), `envs` (env creation, space checks, running normalisation, `evaluate`), `policy_io` (the
one `policy.pt` format, written by online and offline stages alike and loaded to act with
`load_policy(path).act(obs)`) and `portable` (its numpy-only export).
"""
