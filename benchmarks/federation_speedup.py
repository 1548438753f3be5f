"""Does federation make agents learn faster? Steps per client to a return threshold versus the number of clients K.

The study lives in :mod:`securefrl.speedup` (``securefrl speedup`` runs a small slice of it on any environment
family); this script runs it with the full defaults: K in {1, 2, 5, 10, 20}, both modes (delta, gradient),
5 seeds, the three-setting single-agent sweep.

The question FedPG-BR (Fan et al., NeurIPS 2021, "Fault-Tolerant Federated Reinforcement Learning with
Theoretical Guarantee") answers with "3-4x fewer samples per agent with 10 agents than with one". Measured
here, fairly:

- **Same reset semantics on both sides.** Environments persist across rounds in the library (an episode
  started in one round ends in a later one), exactly as a single agent's episodes run on across its
  updates; the old benchmark reset every client's environments every round but never the single agent's.
- **Federations of K in {1, 2, 5, 10, 20}** identical clients (heterogeneity 0, FedPG-BR's setting), FedAvg
  (server lr 1) of PPO clients with the per-client settings ``--client`` (default 1 env x 32 steps, one update
  per round on that rollout: a federation of K gathers K x 32 transitions per global update).
- **Baselines:** (a) K = 1 with the same per-client settings (FedPG-BR's protocol), and (b) the best single
  agent of a small sweep over rollout size (envs x steps) and epochs (``--sweep``), picked by mean steps to the
  threshold (first of three consecutive hits).
- **Metric:** environment steps *per client* until the greedy evaluation return (about 10 episodes: ceil(10/K)
  per client over K clients, 10 for a single agent) reaches ``--threshold``, on a grid of ``--eval-every``
  steps per client: the first hit, and the first of three consecutive hits. Mean and 95% Student-t interval
  over seeds; a run that never gets there counts as its budget and the row says how many missed (the mean is
  then a lower bound). Speed-ups are ratios of means, with a seeded bootstrap 95% interval over seeds.

Writes ``<out>.json``, ``<out>.md`` (the table) and ``<out>.png`` (log-log steps per client versus K, with the
linear-speed-up line K=1 / K and the best single agent). The vectorized simulation trains delta-mode
federations of the families with a batched implementation, CartPole and Acrobot among them (the same results as
the per-client loop up to float rounding, see tests/securefrl/test_vectorized*.py); gradient mode and other
environments use the loop. Usage::

    python benchmarks/federation_speedup.py                                  # CartPole, K 1..20, 5 seeds
    python benchmarks/federation_speedup.py --env acrobot                    # Acrobot (threshold -100, loop)
    python benchmarks/federation_speedup.py --ks 1 10 --seeds 0 1 --sweep 8x32:20  # quick look
    python benchmarks/federation_speedup.py --modes gradient --ks 1 10       # one mode
    python benchmarks/federation_speedup.py --merge a.json b.json --out combined  # stages run in parallel
"""

from __future__ import annotations

from securefrl.speedup import main

if __name__ == "__main__":
    raise SystemExit(main())
