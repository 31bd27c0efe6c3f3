#!/usr/bin/env python3
"""hf_to_gguf.py - a bf16 HF Llama checkpoint (one model.safetensors, byte-level
BPE tokenizer.json) as GGUF bf16, for llama.cpp's side of bench/ppl_bench.sh
and bench/decode_bench.sh where its convert_hf_to_gguf.py cannot run (it needs
torch).

    PYTHONPATH=LLAMA_CPP/gguf-py python3 bench/hf_to_gguf.py MODEL_DIR OUT.gguf

Written with llama.cpp's gguf-py (its numpy-only writer), mirroring what
convert_hf_to_gguf.py does for LlamaModel: q/k rows permuted for GGML's
rotary layout, 1-D norms as f32, matrices kept bf16 as stored, a tied lm_head
omitted, the tokenizer as "gpt2" with its merges. A measurement helper, not
part of the toolkit."""
import json, struct, sys
import numpy as np
import gguf

src, dst = sys.argv[1], sys.argv[2]
cfg = json.load(open(f"{src}/config.json"))
tok = json.load(open(f"{src}/tokenizer.json"))
f = open(f"{src}/model.safetensors", "rb")
n = struct.unpack("<Q", f.read(8))[0]
hdr = json.loads(f.read(n)); base = 8 + n

def tensor(name):
    h = hdr[name]; a, b = h["data_offsets"]; f.seek(base + a)
    raw = f.read(b - a)
    assert h["dtype"] == "BF16", (name, h["dtype"])
    return np.frombuffer(raw, dtype=np.uint16).reshape(h["shape"])

def bf16_to_f32(u): return (u.astype(np.uint32) << 16).view(np.float32)

def permute(w, n_head):
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

H, KV = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
hd = cfg.get("head_dim", cfg["hidden_size"] // H)
w = gguf.GGUFWriter(dst, "llama")
w.add_name(src.rstrip("/").rsplit("/", 1)[-1])
w.add_context_length(cfg["max_position_embeddings"])
w.add_embedding_length(cfg["hidden_size"])
w.add_block_count(cfg["num_hidden_layers"])
w.add_feed_forward_length(cfg["intermediate_size"])
w.add_head_count(H); w.add_head_count_kv(KV)
w.add_key_length(hd); w.add_value_length(hd)
w.add_rope_dimension_count(hd)
theta = cfg.get("rope_theta") or cfg.get("rope_parameters", {}).get("rope_theta", 10000.0)
w.add_rope_freq_base(float(theta))
w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
w.add_vocab_size(cfg["vocab_size"])
w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)

vocab = tok["model"]["vocab"]
added = {a["id"]: a["content"] for a in tok["added_tokens"]}
types = [gguf.TokenType.CONTROL if i in added else gguf.TokenType.NORMAL for i in range(cfg["vocab_size"])]
inv = {v: k for k, v in vocab.items()}
tokens = [added.get(i, inv.get(i, f"[PAD{i}]")) for i in range(cfg["vocab_size"])]
w.add_tokenizer_model("gpt2"); w.add_tokenizer_pre("gpt-2")
w.add_token_list(tokens); w.add_token_types(types)
merges = tok["model"]["merges"]
w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
w.add_bos_token_id(cfg["bos_token_id"]); w.add_eos_token_id(cfg["eos_token_id"])
w.add_add_bos_token(True)

def add(name, arr, bf16=True):
    if bf16 and arr.ndim == 2: w.add_tensor(name, arr, raw_dtype=gguf.GGMLQuantizationType.BF16)
    else: w.add_tensor(name, bf16_to_f32(arr))

add("token_embd.weight", tensor("model.embed_tokens.weight"))
add("output_norm.weight", tensor("model.norm.weight"))
if not cfg.get("tie_word_embeddings") and "lm_head.weight" in hdr: add("output.weight", tensor("lm_head.weight"))
for l in range(cfg["num_hidden_layers"]):
    p = f"model.layers.{l}."
    add(f"blk.{l}.attn_norm.weight", tensor(p + "input_layernorm.weight"))
    add(f"blk.{l}.ffn_norm.weight", tensor(p + "post_attention_layernorm.weight"))
    add(f"blk.{l}.attn_q.weight", permute(tensor(p + "self_attn.q_proj.weight"), H))
    add(f"blk.{l}.attn_k.weight", permute(tensor(p + "self_attn.k_proj.weight"), KV))
    add(f"blk.{l}.attn_v.weight", tensor(p + "self_attn.v_proj.weight"))
    add(f"blk.{l}.attn_output.weight", tensor(p + "self_attn.o_proj.weight"))
    add(f"blk.{l}.ffn_gate.weight", tensor(p + "mlp.gate_proj.weight"))
    add(f"blk.{l}.ffn_up.weight", tensor(p + "mlp.up_proj.weight"))
    add(f"blk.{l}.ffn_down.weight", tensor(p + "mlp.down_proj.weight"))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
