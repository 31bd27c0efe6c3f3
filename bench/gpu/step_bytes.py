#!/usr/bin/env python3
"""step_bytes.py CHECKPOINT_DIR [PACKED.tb ...] - the bytes one decode step reads.

Every tensor of the checkpoint's model*.safetensors but the embedding table (a
step looks up one row of it), lm_head included (the embedding itself when
tied); with packed files, the layers' tensors as those hold them (2:4 values
and indices) in place of the checkpoint's. tb-pack's .tb also carries the
unpruned tensors (embedding, lm_head, norms); only '.layers.' tensors are
taken from it. The bound of a memory-bound decode step is this over the copy
rate (bench/gpu/copybw.cu)."""
import glob, json, struct, sys
def tensors(p):
    with open(p, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        return {k: v['data_offsets'][1] - v['data_offsets'][0]
                for k, v in json.loads(f.read(n)).items() if k != '__metadata__'}
t = {}
for p in glob.glob(sys.argv[1] + '/model*.safetensors'): t.update(tensors(p))
for p in sys.argv[2:]:
    for k, v in tensors(p).items():
        if '.layers.' not in k: continue
        t.pop(k.rsplit('.', 1)[0] if k.endswith(('.values', '.indices')) else k, None)
        t[k] = v
emb = t.get('model.embed_tokens.weight', 0)
print(sum(t.values()) - (emb if 'lm_head.weight' in t else 0))
