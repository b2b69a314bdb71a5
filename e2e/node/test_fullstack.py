"""The whole product on a real node, driven the way a user drives it: helm, kubectl, openai.

`helm install` the chart with the operator image, `kubectl apply` manifests/demo.yaml, wait for
Ready=True, then serve through the router Service from the host and from a pod, scale decode,
survive pod deletions and an engine roll under load, delete. Tests run in file order and share
one ServingDeployment (module fixture `demo`). Run with `make e2e-node`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import yaml
from kube import Kubectl, load_yaml_docs, wait_for
from load import run_load
from setup_cluster import helm_binary

REPO = Path(__file__).resolve().parents[2]
RUN = Path(os.environ.get("LAMINA_NODE_RUN", "/nonexistent"))
NS = "lamina-demo"
NAME = "demo"
SD = "servingdeployments.lamina.dev"
SELECT = f"lamina.dev/deployment={NAME}"
PROMPT = "The fortune says"
MAX_TOKENS = 16
DEMO_MODEL = REPO / "engine" / "lamina_engine" / "demo" / "model"
IMAGES = Path(os.environ.get("LAMINA_NODE_CACHE", Path.home() / ".cache/lamina/node")) / "images"
RELIABILITY = Path(os.environ.get("LAMINA_NODE_RELIABILITY_OUT", RUN / "reliability.json"))


@pytest.fixture(scope="module")
def admin() -> Kubectl:
    return Kubectl(Path(os.environ["KUBECONFIG"]))


def chart_dir() -> Path:
    """charts/lamina of the commit the images were built from (e2e/node/images.sh records it):
    the CRDs must be the ones the operator in the image was generated with."""
    commit = (IMAGES / "commit").read_text().strip()
    if commit == "worktree":
        return REPO / "charts" / "lamina"
    dest = RUN / f"chart-{commit[:12]}"
    if not dest.exists():
        dest.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "charts/lamina"],
                                 capture_output=True, check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "charts" / "lamina"


@pytest.fixture(scope="module")
def chart(admin: Kubectl):
    helm = helm_binary()
    # rbac.secretNamespaces puts a RoleBinding there: the namespace must exist before the install.
    admin.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    subprocess.run([
        helm, "install", "lamina", str(chart_dir()), "-n", "lamina-system",
        "--create-namespace", "--set", "image.repository=localhost/lamina-operator",
        "--set", "image.tag=local", "--set", "image.pullPolicy=Never",
        # An all-namespaces install reads Secrets (the managed Redis password) only where granted.
        "--set", f"rbac.secretNamespaces={{{NS}}}", "--wait", "--timeout", "5m",
    ], check=True)  # fmt: skip
    yield
    subprocess.run([helm, "uninstall", "lamina", "-n", "lamina-system", "--wait"], check=False)


def demo_docs() -> list[dict]:
    """manifests/demo.yaml with locally built images (the model comes from the engine image)."""
    docs = load_yaml_docs(REPO / "manifests" / "demo.yaml")
    for doc in docs:
        if doc["kind"] == "ServingDeployment":
            engine = doc["spec"]["engine"]
            engine.update(image="localhost/lamina-engine:local", imagePullPolicy="Never")
            engine["kvTransfer"]["redis"]["image"] = "localhost/redis:local"
    return docs


def ready(admin: Kubectl, name: str = NAME) -> dict | None:
    obj = admin.in_namespace(NS).get(SD, name)
    conds = {c["type"]: c for c in ((obj or {}).get("status") or {}).get("conditions") or []}
    if (
        obj
        and conds.get("Ready", {}).get("status") == "True"
        and (obj["status"].get("observedGeneration") == obj["metadata"]["generation"])
    ):
        return obj
    return None


@pytest.fixture(scope="module")
def demo(admin: Kubectl, chart) -> dict:
    admin.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    docs = demo_docs()
    admin.in_namespace(NS).apply(docs)
    obj = wait_for("the demo ServingDeployment Ready=True", lambda: ready(admin), 900)
    yield obj
    # kubectl runs under a 60 s limit (e2e/kube.py): delete without waiting, then poll.
    admin.run("delete", "namespace", NS, "--ignore-not-found", "--wait=false", check=False)
    wait_for(f"namespace {NS} gone", lambda: admin.get("namespace", NS) is None, 180)


def pods(admin: Kubectl, role: str) -> list[dict]:
    return admin.in_namespace(NS).list("pods", "-l", f"{SELECT},lamina.dev/role={role}")


def router_url(admin: Kubectl, name: str = NAME) -> str:
    select = f"lamina.dev/deployment={name},lamina.dev/role=router"
    (svc,) = admin.in_namespace(NS).list("services", "-l", select)
    port = svc["spec"]["ports"][0]["port"]
    return f"http://{svc['spec']['clusterIP']}:{port}/v1"


def expected_text(prompt: str = PROMPT, *settings: str) -> str:
    """What `lamina generate` says for `prompt`, greedy, on the same checkpoint."""
    out = subprocess.run(
        [str(REPO / ".venv" / "bin" / "lamina"), "generate", "--model", str(DEMO_MODEL),
         "--dtype", "float32", "--max-tokens", str(MAX_TOKENS), "--temperature", "0",
         *settings, prompt],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, f"lamina generate {' '.join(settings)}: {out.stderr[-2000:]}"
    assert out.stdout.startswith(prompt), out.stdout
    return out.stdout


@pytest.fixture(scope="module")
def greedy(demo) -> str:
    router_polling(Kubectl(Path(os.environ["KUBECONFIG"])), prefill=1, decode=1)
    client = openai.OpenAI(base_url=router_url(Kubectl(Path(os.environ["KUBECONFIG"]))),
                           api_key="none", max_retries=5)  # fmt: skip
    text = (
        client.completions.create(
            model="lamina-demo", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0.0
        )
        .choices[0]
        .text
    )
    return text


def test_pods_run_as_non_root(admin: Kubectl, demo: dict) -> None:
    all_pods = admin.in_namespace(NS).list("pods", "-l", SELECT)
    roles = {p["metadata"]["labels"]["lamina.dev/role"] for p in all_pods}
    assert {"prefill", "decode", "router", "redis"} <= roles, roles
    for pod in all_pods:
        assert pod["status"]["phase"] == "Running", pod["metadata"]["name"]
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        uid = admin.in_namespace(NS).run("exec", pod["metadata"]["name"], "--", "sh", "-c", "id -u")
        assert int(uid) != 0, pod["metadata"]["name"]


def test_completion_from_host_equals_lamina_generate(greedy: str) -> None:
    assert greedy, "empty completion"
    assert expected_text().startswith(PROMPT + greedy)


def test_streamed_chat_from_host(admin: Kubectl, demo: dict) -> None:
    client = openai.OpenAI(base_url=router_url(admin), api_key="none", max_retries=3)
    stream = client.chat.completions.create(
        model="lamina-demo", messages=[{"role": "user", "content": "Tell me a fortune."}],
        max_tokens=MAX_TOKENS, temperature=0.0, stream=True,
    )  # fmt: skip
    chunks = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([c for c in chunks if c]) >= 2, chunks
    assert "".join(chunks).strip()


IN_POD = """
import json, sys, urllib.request
body = {"model": "lamina-demo", "prompt": sys.argv[2], "max_tokens": int(sys.argv[3]),
        "temperature": 0.0}
req = urllib.request.Request(sys.argv[1] + "/completions", json.dumps(body).encode(),
                             {"Content-Type": "application/json"})
print(json.load(urllib.request.urlopen(req, timeout=120))["choices"][0]["text"], end="")
"""


def test_completion_from_a_pod_by_service_name(admin: Kubectl, demo: dict, greedy: str) -> None:
    """Cluster DNS + kube-proxy: the prefill pod asks the router by its Service's DNS name."""
    (svc,) = admin.in_namespace(NS).list("services", "-l", f"{SELECT},lamina.dev/role=router")
    port = svc["spec"]["ports"][0]["port"]
    url = f"http://{svc['metadata']['name']}.{NS}.svc.cluster.local:{port}/v1"
    pod = pods(admin, "prefill")[0]["metadata"]["name"]
    text = admin.in_namespace(NS).run("exec", pod, "--", "python3", "-c", IN_POD, url, PROMPT,
                                      str(MAX_TOKENS))  # fmt: skip
    assert text == greedy


def metric(admin: Kubectl, pod: str, name: str, label: str) -> float:
    """Sum of `name` samples whose labels contain `label`, read from the pod's /metrics."""
    text = admin.in_namespace(NS).run("exec", pod, "--", "python3", "-c",
        "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:8000/metrics')"
        ".read().decode())")  # fmt: skip
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and label in line
    )


def router_polling(admin: Kubectl, name: str = NAME, **ready: int) -> str:
    """Wait until the router of `name` counts at least `ready[kind]` ready backends of each kind
    (lamina_router_backends_ready, set at each readiness probe); its pod name. Ready=True only
    says each pool has a ready pod: the router may not have polled them yet, and until then it
    sends a prompt straight to a decode pod (path "direct")."""
    select = f"lamina.dev/deployment={name},lamina.dev/role=router"
    router = admin.in_namespace(NS).list("pods", "-l", select)[0]["metadata"]["name"]

    def polled() -> bool:
        return all(metric(admin, router, "lamina_router_backends_ready", f'kind="{kind}"') >= n
                   for kind, n in ready.items())  # fmt: skip

    wait_for(f"router {router} polling {ready}", polled, 60)
    return router


def test_router_took_the_disaggregated_path(admin: Kubectl, greedy: str) -> None:
    router = pods(admin, "router")[0]["metadata"]["name"]
    assert metric(admin, router, "lamina_router_requests_total", 'path="disagg"') >= 1


def test_scale_decode_to_two_and_the_new_pod_takes_traffic(admin: Kubectl, greedy: str) -> None:
    t0 = time.monotonic()
    # The CRD has no scale subresource (one object, three pools with replicas each), so
    # `kubectl scale` cannot name a pool: a pool is scaled by patching its replicas.
    admin.in_namespace(NS).run("patch", SD, NAME, "--type=merge", "-p",
                               '{"spec":{"decode":{"replicas":2}}}')  # fmt: skip

    def two_ready() -> list[dict] | None:
        ps = [p for p in pods(admin, "decode") if _pod_ready(p)]
        return ps if len(ps) == 2 and ready(admin) else None

    decoders = wait_for("2 ready decode pods and Ready=True", two_ready, 300)
    print(f"scale decode 1 -> 2: {time.monotonic() - t0:.0f} s")
    router_polling(admin, decode=2)
    # 4 in flight: least-kv breaks a tie of equal KV use by requests running there, so
    # one-at-a-time requests to idle pods would all go to the same one.
    client = openai.OpenAI(base_url=router_url(admin), api_key="none", max_retries=3)

    def one(_: int) -> str:
        return client.completions.create(model="lamina-demo", prompt=PROMPT, max_tokens=4,
                                         temperature=0.0).choices[0].text  # fmt: skip

    with ThreadPoolExecutor(max_workers=4) as pool:
        for text in pool.map(one, range(16)):
            assert greedy.startswith(text)
    served = {p["metadata"]["name"]: metric(admin, p["metadata"]["name"],
                                            "lamina_requests_total", 'role="decode"')
              for p in decoders}  # fmt: skip
    assert all(v > 0 for v in served.values()), served


def _pod_ready(pod: dict) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    deleting = pod["metadata"].get("deletionTimestamp")
    return not deleting and any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def pools_settled(kube: Kubectl, newer_than: dict[str, int] | None = None) -> bool:
    """Every pool Deployment rolled out (all replicas updated and available, no old pod left);
    with `newer_than` (role -> generation), only once each has a later generation."""
    for role in ("prefill", "decode", "router"):
        dep = kube.get("deployments", f"{NAME}-{role}")
        gen, st, want = (
            dep["metadata"]["generation"],
            dep.get("status") or {},
            dep["spec"]["replicas"],
        )
        if newer_than is not None and gen <= newer_than[role]:
            return False
        counts = (st.get("updatedReplicas"), st.get("replicas"), st.get("availableReplicas"))
        if st.get("observedGeneration") != gen or counts != (want, want, want):
            return False
    return True


def test_pod_deletions_and_an_engine_roll_under_load(admin: Kubectl, greedy: str) -> None:
    """>= 120 requests, 4 in flight: delete the prefill pod, then a decode pod, then roll the
    engine, each time waiting under load until the pools are whole again (the load goes on
    until the roll has finished); every request ends with the right text, possibly after
    retryable errors."""
    kube = admin.in_namespace(NS)
    events: list[str] = []

    def disrupt(progress) -> None:
        for at, what in ((15, "prefill"), (40, "decode"), (65, "roll")):
            wait_for(f"{at} requests done", lambda at=at: progress() >= at or None, 600)
            if what == "roll":
                gens = {r: kube.get("deployments", f"{NAME}-{r}")["metadata"]["generation"]
                        for r in ("prefill", "decode", "router")}  # fmt: skip
                kube.run("patch", SD, NAME, "--type=merge", "-p",
                         '{"spec":{"engine":{"scheduling":{"tokenBudget":256}}}}')  # fmt: skip
                events.append(f"{what} at {progress()} done")
                wait_for("the roll finished", lambda g=gens: pools_settled(kube, g), 600)
            else:
                victim = pods(admin, what)[0]["metadata"]["name"]
                kube.run("delete", "pod", victim, "--wait=false")
                events.append(f"{what} at {progress()} done")
                wait_for(f"{what} pod replaced", lambda v=victim: kube.get("pod", v) is None
                         and pools_settled(kube), 600)  # fmt: skip
            events.append(f"{what} settled at {progress()} done")

    result = run_load(router_url(admin), "lamina-demo", PROMPT, greedy, requests=120,
                      concurrency=4, max_tokens=MAX_TOKENS, during=disrupt)  # fmt: skip
    report = {
        "requests": result.requests, "completed": result.completed,
        "ok_first_try": result.ok_first_try, "ok_after_retry": result.ok_after_retry,
        "retries": dict(result.retry_reasons), "failed": result.failed,
        "seconds": round(result.seconds, 1), "events": events,
    }  # fmt: skip
    RELIABILITY.write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    assert not result.failed, report
    assert result.requests >= 120 and result.completed == result.requests, report
    wait_for("Ready=True after the roll", lambda: ready(admin), 600)


def test_delete_removes_everything_it_owned(admin: Kubectl, demo: dict) -> None:
    kube = admin.in_namespace(NS)
    uid = kube.get(SD, NAME)["metadata"]["uid"]
    kube.run("delete", SD, NAME, "--wait=false")
    wait_for("the ServingDeployment gone", lambda: kube.get(SD, NAME) is None, 120)

    def gone() -> bool:
        left = [
            f"{kind}/{o['metadata']['name']}"
            for kind in (
                "deployments",
                "replicasets",
                "pods",
                "services",
                "configmaps",
                "secrets",
                "poddisruptionbudgets",
            )  # fmt: skip
            for o in kube.list(kind, "-l", SELECT)
        ]
        return not left and not any(kube.owned_by(k, uid) for k in ("deployments", "services"))

    wait_for("every child of the ServingDeployment gone", gone, 180)


SPEED_NAME = "demo-speed"
# A prompt whose greedy text on the demo model changes with SPEED (K=2 of 4 layers), so the
# comparison also shows the pods ran SPEED.
SPEED_PROMPT = "A wise man once told me that the best way to"
SPEED_SETTINGS = ("--scheduling-policy", "layered", "--speed-prefill-layers", "2",
                  "--speed-anchors", "1")  # fmt: skip


def speed_demo_doc() -> dict:
    """manifests/demo.yaml as a second ServingDeployment with layered prefill and SPEED on."""
    (doc,) = [d for d in demo_docs() if d["kind"] == "ServingDeployment"]
    doc["metadata"]["name"] = SPEED_NAME
    doc["spec"]["model"]["numLayers"] = 4  # lets the operator check speed.prefillLayers
    doc["spec"]["engine"]["scheduling"] = {"policy": "layered"}
    doc["spec"]["engine"]["speed"] = {"enabled": True, "prefillLayers": 2, "anchorTokens": 1}
    return doc


def test_layered_prefill_with_speed_equals_lamina_generate(admin: Kubectl, demo: dict) -> None:
    """A second deployment of the demo model, layered prefill and SPEED on: its greedy
    completion through the router (prefill -> KV over Redis -> decode) equals `lamina
    generate` with the same settings, and differs from the one without SPEED."""
    kube = admin.in_namespace(NS)
    kube.apply(speed_demo_doc())
    try:
        wait_for(f"{SPEED_NAME} Ready=True", lambda: ready(admin, SPEED_NAME), 900)
        router = router_polling(admin, SPEED_NAME, prefill=1, decode=1)
        client = openai.OpenAI(base_url=router_url(admin, SPEED_NAME), api_key="none",
                               max_retries=5)  # fmt: skip
        text = (
            client.completions.create(
                model="lamina-demo", prompt=SPEED_PROMPT, max_tokens=MAX_TOKENS, temperature=0.0
            )
            .choices[0]
            .text
        )
        assert text, "empty completion"
        assert expected_text(SPEED_PROMPT, *SPEED_SETTINGS).startswith(SPEED_PROMPT + text)
        assert not expected_text(SPEED_PROMPT).startswith(SPEED_PROMPT + text)
        assert metric(admin, router, "lamina_router_requests_total", 'path="disagg"') >= 1
    finally:
        kube.run("delete", SD, SPEED_NAME, "--ignore-not-found", "--wait=false", check=False)
    wait_for(f"{SPEED_NAME} gone", lambda: kube.get(SD, SPEED_NAME) is None, 120)


def test_manifest_is_valid_yaml() -> None:
    docs = [d for d in yaml.safe_load_all((REPO / "manifests" / "demo.yaml").read_text()) if d]
    assert [d["kind"] for d in docs] == ["ServingDeployment"]
    assert docs[0]["spec"]["model"]["source"] == "builtin://lamina-demo"
