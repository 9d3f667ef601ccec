"""tritonclient against Kiln over TLS with API keys: what is refused, and how it reads."""
import tempfile

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import secure_kiln


@pytest.fixture(scope="module")
def server():
    folder = tempfile.mkdtemp(prefix="kiln-tls-")
    k = secure_kiln("models", folder, ["--rate-limit", "0.05", "--rate-limit-burst", "3"])
    yield k
    k.stop()


def infer_args(mod):
    i = mod.InferInput("INPUT0", [1, 16], "FP32")
    i.set_data_from_numpy(np.zeros((1, 16), np.float32))
    return "mlp_tiny", [i]


def test_missing_and_wrong_keys_are_refused_alike(server):
    messages = []
    for key in (None, "not-a-key"):
        h = server.http_client(key=key or "")  # "" sends no key
        with pytest.raises(InferenceServerException) as e:
            h.get_model_metadata("mlp_tiny")
        assert e.value.status() == "401", e.value
        messages.append(e.value.message())
        g = server.grpc_client(key=key or "")
        with pytest.raises(InferenceServerException) as e:
            g.infer(*infer_args(grpcclient))
        assert e.value.status() == "StatusCode.UNAUTHENTICATED", e.value
    assert messages[0] == messages[1]
    # Probes need no key.
    assert server.http_client(key="").is_server_live() and server.grpc_client(key="").is_server_ready()


def test_a_client_certificate_names_its_key(server):
    g = server.grpc_client(key="", cert=True)
    assert g.infer(*infer_args(grpcclient)).as_numpy("OUTPUT0").shape == (1, 4)
    # CN=pytest's key holds infer and metrics, not admin.
    with pytest.raises(InferenceServerException) as e:
        g.get_model_repository_index()
    assert e.value.status() == "StatusCode.PERMISSION_DENIED", e.value


def test_plaintext_clients_fail_cleanly_on_tls_ports(server):
    with pytest.raises(InferenceServerException, match="speaks TLS only"):
        httpclient.InferenceServerClient(server.http_url, network_timeout=5).get_server_metadata()
    with pytest.raises(InferenceServerException):
        grpcclient.InferenceServerClient(server.grpc_url).is_server_live(client_timeout=5)


def test_over_the_rate_reads_429_and_resource_exhausted(server):
    # The server's default rate (3 at once, then one per 20 s) applies to each
    # key without its own; the admin key is one.
    h = server.http_client()
    codes = []
    for _ in range(4):
        try:
            h.infer(*infer_args(httpclient))
            codes.append("200")
        except InferenceServerException as e:
            codes.append(e.status())
    assert codes[-1] == "429", codes
    with pytest.raises(InferenceServerException) as e:
        server.grpc_client().infer(*infer_args(grpcclient))
    assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED", e.value
    assert "retry in" in e.value.message()
