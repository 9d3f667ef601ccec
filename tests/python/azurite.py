"""Azurite, Azure Blob Storage's emulator (npm, installed into tests/tools on
first use), on a free 127.0.0.1 port, with its well-known development account."""
import os
import shutil
import subprocess
import tempfile

from azure.storage.blob import BlobServiceClient

from s3_server import free_port, wait_for_port

TOOLS = os.path.join(os.path.dirname(__file__), "..", "tools")
ACCOUNT = "devstoreaccount1"
# Azurite's published development key (not a secret: every Azurite has it).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def installed():
    blob = os.path.join(TOOLS, "node_modules", ".bin", "azurite-blob")
    if not os.path.exists(blob):
        if not shutil.which("npm"):
            return None
        subprocess.run(["npm", "ci", "--silent", "--no-audit", "--no-fund"], cwd=TOOLS, check=True,
                       capture_output=True, timeout=600)
    return blob


class Azurite:
    def __init__(self, blob):
        self.port = free_port()
        self.data = tempfile.mkdtemp(prefix="kiln-azurite-")
        self.proc = subprocess.Popen(
            [blob, "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location", self.data,
             "--silent", "--skipApiVersionCheck"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc, lambda: "Azurite did not start")

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def env(self):
        """How Kiln (object_store) finds the account."""
        return {"AZURE_STORAGE_ACCOUNT_NAME": ACCOUNT, "AZURE_STORAGE_ACCOUNT_KEY": KEY}

    def container(self, name):
        conn = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                f"BlobEndpoint={self.endpoint};")
        return BlobServiceClient.from_connection_string(conn).get_container_client(name)

    def stop(self):
        # Azurite lingers after SIGTERM; nothing of it needs keeping.
        self.proc.kill()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.data, ignore_errors=True)
