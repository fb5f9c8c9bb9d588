#!/usr/bin/env python3
"""Hugging Face reference for `zoo bench generate`: a GPT2LMHeadModel of random weights in a
preset's shape (GPT-2 small by default), `generate` with its KV cache, sampling from the top k,
exactly NEW tokens after random prompts of PROMPT tokens. Prints one line in zoo's terms: the
prompt pass (generate to one token) and the milliseconds per further token, medians of REPEATS
timed runs after one untimed.

usage: hf_generate.py [--layers 12 --heads 12 --width 768 --vocab 50257 --block 1024]
                      [--batch 1] [--prompt 16] [--new 128] [--top-k 50] [--repeats 3] [--threads 2]
  `zoo bench generate --preset gpt2-small --batch-size 8` against `hf_generate.py --batch 8`
needs: pip install torch transformers
"""
import argparse, statistics, time
import torch
from transformers import GPT2Config, GPT2LMHeadModel

p = argparse.ArgumentParser()
for name, default in [("layers", 12), ("heads", 12), ("width", 768), ("vocab", 50257), ("block", 1024),
                      ("batch", 1), ("prompt", 16), ("new", 128), ("top-k", 50), ("repeats", 3), ("threads", 2)]:
    p.add_argument(f"--{name}", type=int, default=default)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
config = GPT2Config(n_layer=a.layers, n_head=a.heads, n_embd=a.width, vocab_size=a.vocab, n_positions=a.block,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=a.vocab - 1, eos_token_id=a.vocab - 1)
model = GPT2LMHeadModel(config).eval()
sampling = dict(do_sample=a.top_k > 0, top_k=a.top_k if a.top_k > 0 else None, pad_token_id=0, use_cache=True)


def generate(new):
    prompt = torch.randint(0, a.vocab, (a.batch, a.prompt))
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                             min_new_tokens=new, **sampling)
    assert out.shape[1] == a.prompt + new
    return time.perf_counter() - started


generate(a.new)
prefill = statistics.median(generate(1) for _ in range(a.repeats))
full = statistics.median(generate(a.new) for _ in range(a.repeats))
token_ms = (full - prefill) * 1e3 / (a.new - 1)
params = sum(t.numel() for t in model.parameters())
print(f"hf-generate params={params} batch={a.batch} prompt_len={a.prompt} new_tokens={a.new} top_k={a.top_k} "
      f"prefill_ms={prefill * 1e3:.1f} token_ms={token_ms:.2f} tokens_per_s={a.batch / token_ms * 1e3:.1f}")
