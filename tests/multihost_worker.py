"""One process of the multi-host check (tests/test_multihost.py); also runs alone as 1 process.

Each process starts jax.distributed (when there are several), builds the global mesh, puts its
own rows of a deterministic global batch with sharding.put_local, scores them and runs 3 train
steps as redjax/train.py does, saves an Orbax checkpoint from every process, and writes the
metrics, the final parameters and which global rows it held to OUT/result_<process>.npz.
With --restore DIR it also restores checkpoint 3 of DIR into a state like its own and writes it.

    python tests/multihost_worker.py --out DIR [--coordinator H:P --num-processes N --process-id I]
"""

from __future__ import annotations

import argparse
import os
import sys

DISTRIBUTED_FAILED = 77  # exit code: jax.distributed could not start on this platform
MESHES = ((2, 4, 1), (1, 8, 1))  # data over hosts + fsdp within; fsdp across hosts
STEPS = 3
ROWS_PER_HOST = 16  # global batch rows = ROWS_PER_HOST * 2 (two hosts' worth in every mode)
HOSTS = 2  # the batch is built as two host slices, whatever the process count


def host_rows(host: int, it: int, n: int = ROWS_PER_HOST, p: int = 8, c: int = 8):
    """Host `host`'s rows of global batch `it` (the same numbers however many processes run)."""
    import numpy as np

    from redjax.rows import make_rows

    rng = np.random.default_rng(1000 * it + host)
    plen = rng.integers(2, p + 1, n)
    clen = rng.integers(1, c + 1, n)
    prompt_mask = np.arange(p)[None] >= (p - plen)[:, None]
    resp_mask = np.arange(c)[None] < clen[:, None]
    return make_rows(
        prompt_ids=np.where(prompt_mask, rng.integers(0, 96, (n, p)), 0),
        prompt_mask=prompt_mask,
        resp_ids=np.where(resp_mask, rng.integers(0, 96, (n, c)), 0),
        resp_mask=resp_mask,
        online=np.arange(n) % 4 != 3,
        adv=rng.normal(size=n),
        shift=rng.uniform(size=n),
    )


def flat(tree, prefix: str) -> dict:
    import jax

    out = {}
    for kp, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out[prefix + "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in kp)] = x
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--coordinator", default=None)
    ap.add_argument("--num-processes", type=int, default=1)
    ap.add_argument("--process-id", type=int, default=0)
    ap.add_argument("--restore", default=None, help="checkpoint folder (prefix) to restore")
    args = ap.parse_args()

    import time

    t0 = time.time()
    say = lambda msg: print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)
    import jax

    if args.num_processes > 1:
        from redjax import distributed

        try:
            distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        except Exception as e:  # noqa: BLE001 - reported to the test, which skips
            print(f"jax.distributed failed to start: {type(e).__name__}: {e}", file=sys.stderr)
            sys.exit(DISTRIBUTED_FAILED)
    assert jax.process_count() == args.num_processes and jax.device_count() == 8
    say("init")

    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils
    from test_step import CFG as cfg  # the single-process step test's model (tests/ is on sys.path)

    from redjax import checkpoint, sharding, step
    from redjax.config import Config, OptimCfg
    from redjax.models import init_params
    from redjax.rows import concat

    sc = step.StepConfig.from_config(Config(), chunk=24, probe=True)  # RED with the probe
    tx = step.make_optimizer(OptimCfg(lr=1e-2, warmup_steps=0, eps=1e-4, weight_decay=0.0), 10)
    pid, nproc = jax.process_index(), jax.process_count()
    mine = range(pid * HOSTS // nproc, (pid + 1) * HOSTS // nproc)  # host slices of this process
    out: dict = {}
    for shape in MESHES:
        tag = "x".join(map(str, shape)) + ":"
        mesh = sharding.make_mesh(*shape)
        # Which global rows live on this process's devices: a contiguous block, in process order.
        n = ROWS_PER_HOST * HOSTS
        idx = sharding.batch_sharding(mesh).addressable_devices_indices_map((n, 1))
        rows = sorted({r for s in idx.values() for r in range(*s[0].indices(n))})
        out[tag + "local_rows"] = np.asarray(rows)

        shapes = jax.eval_shape(lambda: init_params(cfg, 0))
        params = jax.jit(
            lambda: init_params(cfg, 0), out_shardings=sharding.param_shardings(shapes, mesh)
        )()
        state, state_sh = step.init_state(params, tx, mesh)
        train_step = step.jit_train_step(cfg, sc, tx, state_sh, mesh)
        score = step.jit_score(cfg, sc.chunk, 1, mesh)
        metrics = []
        for it in range(STEPS):
            # As train.py: score this process's rows on the mesh, keep their old log-probs.
            local = concat([host_rows(h, it) for h in mine])
            old_logp, _ = score(state["params"], sharding.put_local(local.tokens(), mesh))
            old_logp = sharding.get_local(old_logp)
            local = local.replace(old_logp=old_logp, ref_logp=old_logp)
            # The probe subset is drawn per host slice, as each host of a real run draws its own.
            shards = sharding.data_shards(mesh) // HOSTS
            probed = []
            for j in range(len(mine)):
                block = slice(j * ROWS_PER_HOST, (j + 1) * ROWS_PER_HOST)
                part = jax.tree.map(lambda v, block=block: v[block], local)
                probed.append(part.with_probe(step.probe_rows(part.online, 0.25, shards)))
            batch = sharding.put_local(concat(probed), mesh)
            state, m = train_step(state, batch, jnp.float32(0.5 + 0.1 * it))
            say(f"step {it}")
            metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
        for k in metrics[0]:
            out[tag + "metric/" + k] = np.asarray([m[k] for m in metrics])
        final = multihost_utils.process_allgather(state, tiled=True) if nproc > 1 else state
        out.update(flat(jax.device_get(final), tag + "state/"))

        say("gathered")
        ckpt_dir = os.path.join(args.out, "ckpt_" + tag.rstrip(":"))
        ckpts = checkpoint.Checkpoints(ckpt_dir, keep=3)
        ckpts.save(STEPS, state, {"step": STEPS, "processes": nproc})
        ckpts.close()
        say("saved")
        if args.restore:
            like, _ = step.init_state(
                jax.jit(lambda: init_params(cfg, 1), out_shardings=state_sh["params"])(), tx, mesh
            )
            other = checkpoint.Checkpoints(
                os.path.join(args.restore, "ckpt_" + tag.rstrip(":")), keep=3
            )
            restored, host = other.restore(STEPS, like)
            other.close()
            assert host == {"step": STEPS, "processes": 2}, host
            same = jax.tree.map(lambda a, b: a.sharding == b.sharding, restored, like)
            assert all(jax.tree.leaves(same)), "restored arrays lost their shardings"
            out.update(flat(jax.device_get(restored), tag + "restored/"))
    np.savez(os.path.join(args.out, f"result_{pid}.npz"), **out)
    print(f"process {pid}/{nproc}: done")


if __name__ == "__main__":
    main()
