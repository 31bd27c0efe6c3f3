/* tb_config.h - the HF config.json fields a Llama/Mistral-family decoder needs. */
#ifndef TB_CONFIG_H
#define TB_CONFIG_H

#define TB_MAX_EOS 8

typedef struct {
    char model_type[32];     /* "llama", "mistral", "qwen2" */
    char architecture[64];   /* architectures[0], "" if absent */
    int hidden_size;
    int intermediate_size;
    int n_layers;
    int n_heads;
    int n_kv_heads;          /* = n_heads when absent (MHA) */
    int head_dim;            /* = hidden_size / n_heads when absent */
    int vocab_size;
    int max_position_embeddings;
    double rope_theta;       /* top level or rope_parameters.rope_theta */
    double rms_norm_eps;
    int tie_word_embeddings;
    int sliding_window;      /* 0: none */
    int attention_bias;      /* q/k/v projections carry a bias (qwen2) */
    int bos_token_id;        /* -1: none */
    int eos_token_ids[TB_MAX_EOS];
    int n_eos;
} tb_config;

/* Parse config.json text; `label` names it in errors. TB_EDATA on missing or
 * invalid fields, and for an unsupported model_type (naming it). */
int tb_config_parse(tb_config *c, const char *label, const char *json_text);
/* Load <path>/config.json if path is a directory, else path itself. */
int tb_config_load(tb_config *c, const char *path);

/* Parameter counts of the architecture (independent of the files); -1 past
 * 2^53, which tb_config_parse refuses, so a parsed config always has one. */
long long tb_config_param_count(const tb_config *c);

#endif
