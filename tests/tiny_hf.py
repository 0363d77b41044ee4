"""A tiny random Hugging Face Llama and a character tokenizer, built in the tests (no downloads), for the TRL tests."""
from __future__ import annotations

import torch
import transformers


def char_tokenizer(chars: str) -> transformers.PreTrainedTokenizerFast:
    """One token per character of `chars`, plus <pad> = 0, <eos> = 1, <bos> = 2; decodes without spaces."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                                bos_token="<bos>")


def tiny_llama(vocab_size: int, seed: int = 0) -> transformers.LlamaForCausalLM:
    """A random 2-layer Llama (D = 32, 4 heads, 2 KV heads) with the special ids of `char_tokenizer`."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(cfg)
