#!/usr/bin/env python3
"""Translation sentences/s: `attn translate` beside CTranslate2 (fp32 and int8) on the shipped model, same sentences.

    build/ct2venv/bin/python bench/compare_ctranslate2.py --threads 2 --batch-size 64 [--beam 4] [--count 2000]
        [--repeat 5] [--sentences FILE] [--engines attn,attn-int8,ct2-fp32,ct2-int8]

Needs the pip packages ctranslate2, numpy and safetensors (`python3 -m venv build/ct2venv &&
build/ct2venv/bin/pip install ctranslate2 numpy safetensors`) and a built `build/attn`.

Sentences: the test split exactly as `attn eval` makes it (tasks::make_examples with std::mt19937_64, re-implemented
here and checked by the reference targets: CTranslate2 and attn are scored against them), or --sentences FILE with
one source per line, or source<TAB>reference per line.

Engines, each at --threads threads and batches of --batch-size:
  attn      `attn translate --beam K --batch-size B` as a subprocess reading all sentences on standard input, timed
            from outside: process start-up and model load are included (measured alone on one sentence and
            printed); threads through OMP_NUM_THREADS (and --threads where the CLI has it).
  attn-call the Translator call alone, timed as CTranslate2's translate_batch is (no start-up, load or
            tokenisation of a file): `attn bench translate --json --repeat 1` per round, the test split only.
  attn-int8, attn-call-int8: the same with --quantize int8.
  ct2-fp32  ctranslate2.Translator on the model converted by bench/convert_ctranslate2.py (float32),
  ct2-int8  the same converted with --quantization int8 (compute_type int8), both with intra_threads=N,
            inter_threads=1, translate_batch(all sentences, max_batch_size=B, beam_size=K) in this process, timed
            around the call (tokenisation included, model load excluded). CTranslate2 sorts the sentences by length
            before batching; `attn translate` does too.
  ct2-fp32-inter, ct2-int8-inter: the same with inter_threads=N, intra_threads=1 (CTranslate2's throughput
            setting: N batches decoded in parallel, one thread each, as attn's Translator does with several
            batches); at one thread they are the plain engines.
Rounds alternate the engines (the order rotates each round) after one untimed warm-up round; the medians of
--repeat rounds are printed. Beam search differs in its length normalisation (attn: GNMT ((5 + len) / 6)^0.6,
CTranslate2: len^length_penalty, default 1), so beam outputs may differ; greedy outputs of CTranslate2 fp32 must
equal attn's, and the number that differ is printed (for beam > 1 an extra untimed greedy pass checks that).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from malloc_policy import same_malloc_policy

same_malloc_policy()  # before the peer is imported: see bench/malloc_policy.py
import ctranslate2
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from convert_ctranslate2 import convert  # noqa: E402

# ---------------------------------------------------------------- the test split, as src/tasks/numbers_en_zh.cc
M64 = (1 << 64) - 1


def mix(x):  # splitmix64 finaliser
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


class MT19937_64:
    """std::mt19937_64 (the twist and tempering vectorised with numpy)."""
    N, M = 312, 156

    def __init__(self, seed):
        mt = [seed & M64]
        for i in range(1, self.N):
            mt.append((6364136223846793005 * (mt[-1] ^ (mt[-1] >> 62)) + i) & M64)
        self.mt = np.array(mt, dtype=np.uint64)
        self.buf, self.pos = [], 0

    def _twist(self):
        mt, N, M = self.mt, self.N, self.M
        up, lo, a = np.uint64(0xFFFFFFFF80000000), np.uint64(0x7FFFFFFF), np.uint64(0xB5026F5AA96619E9)
        one, zero = np.uint64(1), np.uint64(0)

        def twist(i0, i1, nxt, far):  # mt[i] from mt[i] (upper bit), mt[i + 1] (lower bits), mt[i + M]
            x = (mt[i0:i1] & up) | (nxt & lo)
            mt[i0:i1] = far ^ (x >> one) ^ np.where(x & one, a, zero)

        twist(0, N - M, mt[1:N - M + 1].copy(), mt[M:N].copy())  # the old mt[i + M]
        twist(N - M, N - 1, mt[N - M + 1:N].copy(), mt[0:M - 1].copy())  # mt[i + M - N], already new
        twist(N - 1, N, mt[0:1].copy(), mt[M - 1:M].copy())
        y = mt.copy()
        y ^= (y >> np.uint64(29)) & np.uint64(0x5555555555555555)
        y ^= (y << np.uint64(17)) & np.uint64(0x71D67FFFEDA60000)
        y ^= (y << np.uint64(37)) & np.uint64(0xFFF7EEE000000000)
        y ^= y >> np.uint64(43)
        self.buf, self.pos = y.tolist(), 0

    def __call__(self):
        if self.pos == len(self.buf):
            self._twist()
        self.pos += 1
        return self.buf[self.pos - 1]


ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
DIGITS = "零一二三四五六七八九"
UNITS = ["", "十", "百", "千"]


def below_thousand(n, out):
    if n >= 100:
        out += [ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        out.append(TENS[n // 10])
        if n % 10:
            out.append(ONES[n % 10])
    elif n > 0:
        out.append(ONES[n])


def english_words(n):
    if n == 0:
        return "zero"
    w = []
    if n >= 1_000_000:
        below_thousand(n // 1_000_000, w)
        w.append("million")
    if n // 1000 % 1000:
        below_thousand(n // 1000 % 1000, w)
        w.append("thousand")
    below_thousand(n % 1000, w)
    return " ".join(w)


def chinese_numeral(n):
    if n == 0:
        return "零"
    d = [(n // 10 ** p) % 10 for p in range(9)]
    out, started, zero_pending = "", False, False
    for p in range(8, -1, -1):
        if d[p]:
            if zero_pending:
                out += "零"
            zero_pending = False
            out += DIGITS[d[p]] + UNITS[p % 4]
            started = True
        elif started:
            zero_pending = True
        if p == 8 and d[8]:
            out += "亿"
        if p == 4 and (d[4] or d[5] or d[6] or d[7]):
            out += "万"
            zero_pending = False
    return out[1:] if out.startswith("一十") else out


SPLITS = {"train": 0, "validation": 1, "test": 2}


def split_of(n):
    h = mix((n ^ 0x5EED5EED) & M64) % 100
    return 2 if h == 0 else 1 if h == 1 else 0


def make_examples(split, count, seed=1):
    """(source, target) pairs as `attn eval --split SPLIT --count COUNT --seed SEED` makes them."""
    split_id = SPLITS[split]
    rng = MT19937_64(mix(seed + split_id) ^ split_id)  # attn eval: seed + 1 (validation), + 2 (test)
    out = []
    while len(out) < count:
        digits = 1 + rng() % 9
        n = 0
        zero_rate = rng() % 3
        for i in range(digits):
            digit = rng() % 10
            if i == 0 and digits > 1 and digit == 0:
                digit = 1 + rng() % 9
            if i > 0 and zero_rate and rng() % 4 < zero_rate:
                digit = 0
            n = n * 10 + digit
        if split_of(n) == split_id:
            out.append((english_words(n), chinese_numeral(n)))
    return out


# ---------------------------------------------------------------- engines
class Attn:
    def __init__(self, exe, model, threads, batch, beam, quantize="none"):
        self.name = "attn" if quantize == "none" else "attn-" + quantize
        help_text = subprocess.run([exe, "translate", "--help"], capture_output=True, text=True).stdout
        self.args = [exe, "translate", "--model", model, "--beam", str(beam), "--batch-size", str(batch)]
        if quantize != "none":
            self.args += ["--quantize", quantize]
        if "--threads" in help_text:
            self.args += ["--threads", str(threads)]
        self.env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))

    def translate(self, sources):
        run = subprocess.run(self.args, input="".join(s + "\n" for s in sources), capture_output=True, text=True,
                             env=self.env)
        if run.returncode != 0:
            raise RuntimeError("attn translate failed (%d): %s" % (run.returncode, run.stderr.strip()))
        out = run.stdout.split("\n")[:-1]
        if len(out) != len(sources):
            raise RuntimeError("attn translate gave %d lines for %d sentences" % (len(out), len(sources)))
        return out


class AttnCall:
    """The Translator call alone, as CTranslate2 is timed: `attn bench translate --json` on the same test split
    (its own process; model load, start-up and a warm-up run excluded from the time it reports). No outputs: the
    `attn` engine's are the same engine's."""

    def __init__(self, exe, model, threads, batch, beam, count, quantize="none"):
        self.name = "attn-call" if quantize == "none" else "attn-call-" + quantize
        self.args = [exe, "bench", "translate", "--json", "--repeat", "1", "--model", model, "--count", str(count),
                     "--beam", str(beam), "--batch-size", str(batch), "--threads", str(threads), "--quantize", quantize]
        self.env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))

    def translate(self, sources):
        run = subprocess.run(self.args, capture_output=True, text=True, env=self.env)
        if run.returncode != 0:
            raise RuntimeError("attn bench translate failed (%d): %s" % (run.returncode, run.stderr.strip()))
        self.seconds = json.loads(run.stdout.strip().split("\n")[-1])["median_ms"] / 1000.0
        return None


class CT2:
    def __init__(self, name, model_dir, compute_type, threads, batch, beam, max_length, inter=False):
        self.name = name
        self.translator = ctranslate2.Translator(model_dir, device="cpu", compute_type=compute_type,
                                                 intra_threads=1 if inter else threads,
                                                 inter_threads=threads if inter else 1)
        self.batch, self.beam, self.max_length = batch, beam, max_length

    def translate(self, sources, beam=None):
        results = self.translator.translate_batch([s.split() for s in sources], max_batch_size=self.batch,
                                                  batch_type="examples", beam_size=beam or self.beam,
                                                  max_decoding_length=self.max_length)
        return ["".join(r.hypotheses[0]) for r in results]


def timed(engine, sources):
    t0 = time.perf_counter()
    out = engine.translate(sources)
    t = time.perf_counter() - t0
    return getattr(engine, "seconds", t), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--beam", type=int, default=1)
    ap.add_argument("--count", type=int, default=2000, help="sentences (the first COUNT of --sentences)")
    ap.add_argument("--repeat", type=int, default=5, help="timed rounds (after one untimed warm-up round)")
    ap.add_argument("--sentences", help="one source (or source<TAB>reference) per line; default: the test split")
    ap.add_argument("--split", default="test", choices=sorted(SPLITS), help="without --sentences")
    ap.add_argument("--seed", type=int, default=1, help="data seed, as attn eval's")
    ap.add_argument("--engines", default="attn,attn-int8,ct2-fp32,ct2-int8")
    ap.add_argument("--model", default=os.path.join(HERE, "..", "models", "numbers-en-zh"))
    ap.add_argument("--attn", default=os.path.join(HERE, "..", "build", "attn"))
    ap.add_argument("--ct2-dir", help="where to write the converted models (default: a temporary directory)")
    a = ap.parse_args()
    engines_wanted = a.engines.split(",")
    for e in engines_wanted:
        if e not in ("attn", "attn-int8", "attn-call", "attn-call-int8", "ct2-fp32", "ct2-int8", "ct2-fp32-inter",
                     "ct2-int8-inter"):
            ap.error("unknown engine " + e)
        if e.startswith("attn-call") and (a.sentences or a.split != "test" or a.seed != 1):
            ap.error(e + " times `attn bench translate`, which translates the test split (seed 1) only")

    if a.sentences:
        rows = [line.rstrip("\n").split("\t") for line in open(a.sentences, encoding="utf-8") if line.strip()]
        rows = rows[:a.count]
        sources = [r[0] for r in rows]
        refs = [r[1] for r in rows] if all(len(r) > 1 for r in rows) else None
        what = a.sentences
    else:
        pairs = make_examples(a.split, a.count, a.seed)
        sources, refs = [p[0] for p in pairs], [p[1] for p in pairs]
        what = "the %s split (seed %d)" % (a.split, a.seed)
    print("%d sentences from %s; %d threads, batches of %d, beam %d" %
          (len(sources), what, a.threads, a.batch_size, a.beam))

    max_length = json.load(open(os.path.join(a.model, "config.json")))["max_len"]
    tmp = None
    ct2_dir = a.ct2_dir
    if ct2_dir is None and any(e.startswith("ct2") for e in engines_wanted):
        tmp = tempfile.TemporaryDirectory(prefix="attn-ct2-")
        ct2_dir = tmp.name
    engines = []
    for e in engines_wanted:
        if e in ("attn", "attn-int8"):
            quantize = "int8" if e == "attn-int8" else "none"
            engines.append(Attn(a.attn, a.model, a.threads, a.batch_size, a.beam, quantize))
        elif e.startswith("attn-call"):
            quantize = "int8" if e.endswith("int8") else "none"
            engines.append(AttnCall(a.attn, a.model, a.threads, a.batch_size, a.beam, len(sources), quantize))
        else:
            quant = "int8" if e.startswith("ct2-int8") else None
            d = convert(a.model, os.path.join(ct2_dir, e), quant)
            engines.append(CT2(e, d, quant or "float32", a.threads, a.batch_size, a.beam, max_length,
                               inter=e.endswith("-inter")))
    print("CTranslate2 %s" % ctranslate2.__version__)

    times = {e.name: [] for e in engines}
    outputs = {}
    for r in range(a.repeat + 1):
        k = r % len(engines)
        for e in engines[k:] + engines[:k]:
            t, out = timed(e, sources)
            outputs[e.name] = out
            if r > 0:
                times[e.name].append(t)

    startup = None
    if "attn" in times:  # attn's process start-up and model load, alone: one short sentence
        attn = next(e for e in engines if e.name == "attn")
        startup = statistics.median(timed(attn, ["one"])[0] for _ in range(max(3, a.repeat)))

    print("\n| engine | median s | sentences/s | target tokens/s | exact match |")
    print("|---|---|---|---|---|")
    for e in engines:
        med = statistics.median(times[e.name])
        out, scored = outputs[e.name], refs
        if out is None:  # attn-call: the same engine's outputs through the CLI, if it ran; else only token counts
            out = outputs.get(e.name.replace("-call", ""))
            if out is None:
                out, scored = refs, None
        tokens = sum(len(o) + 1 for o in out)  # characters + EOS
        em = "%.2f%%" % (100.0 * sum(o == g for o, g in zip(out, scored)) / len(out)) if scored else "-"
        print("| %s | %.3f | %.0f | %.0f | %s |" % (e.name, med, len(sources) / med, tokens / med, em))
    if startup is not None:
        print("\nattn's times include process start-up and model load: %.0f ms (median, one sentence)" %
              (1000 * startup))

    # Agreement: greedy outputs of CTranslate2 against attn's.
    if "attn" in outputs:
        greedy = {}
        others = [e for e in engines if e.name != "attn" and outputs[e.name] is not None]
        if a.beam == 1:
            greedy = outputs
        else:  # an extra untimed greedy pass
            greedy["attn"] = Attn(a.attn, a.model, a.threads, a.batch_size, 1).translate(sources)
            for e in others:
                greedy[e.name] = (e.translate(sources, beam=1) if isinstance(e, CT2) else
                                  Attn(a.attn, a.model, a.threads, a.batch_size, 1, "int8").translate(sources))
            for e in others:
                n = sum(x != y for x, y in zip(outputs[e.name], outputs["attn"]))
                print("beam %d: %s differs from attn on %d / %d sentences" % (a.beam, e.name, n, len(sources)))
        for e in others:
            diff = [i for i, (x, y) in enumerate(zip(greedy[e.name], greedy["attn"])) if x != y]
            print("greedy: %s differs from attn on %d / %d sentences%s" %
                  (e.name, len(diff), len(sources),
                   "".join("\n  %s -> attn %s, %s %s" % (sources[i], greedy["attn"][i], e.name, greedy[e.name][i])
                           for i in diff[:5])))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
