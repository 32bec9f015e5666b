"""Shared fixtures: tiny, randomly initialised transformers models and small
tokenizers, built offline from configs and saved to a temporary directory.

Nothing here downloads anything. The tokenizers are trained in a few
milliseconds on a small built-in corpus with the ``tokenizers`` library:

- a byte-level BPE (GPT-2 / RoBERTa style: words carry their leading space),
  wrapped once as a causal-LM tokenizer that adds ``<s>`` in front of a text
  (as Llama's does) and once as a RoBERTa tokenizer (``<s> ... </s>``);
- a word-level tokenizer with BERT's special tokens (``[CLS] ... [SEP]``).

The models are tiny (hidden size 32, 2 layers) with weights drawn large enough
(``initializer_range``) that class scores differ clearly between prompts and
texts, so that comparisons with a naive forward can fail.
"""

from __future__ import annotations

import pytest

CORPUS = [
    "Review: a great and moving film, the best of the year.",
    "Review: a terrible, boring mess with no story at all.",
    "Sentiment: positive. Sentiment: negative. Answer: yes. Answer: no.",
    "It was great. It was terrible. It was fine. It was bad. It was good.",
    "The acting is wonderful and the music is lovely; I loved every minute.",
    "The plot is dull, the jokes are flat and the ending is awful.",
    "fresh rotten fresh rotten positive negative good bad",
    "A delight from start to finish, funny, warm and clever.",
    "Dull, overlong and utterly pointless; the actors seem bored and so was I.",
    "An instant classic. A waste of time. Not bad. Not good. Quite fun.",
]

CAUSAL_TEMPLATE = "Review: {text}\nSentiment:"
VERBALIZER = {"fresh": "positive", "rotten": "negative"}
TEXTS = [
    "Great.",
    "A delight from start to finish, funny, warm and clever, with wonderful acting and lovely music.",
    "The plot is dull.",
    "Dull, overlong and utterly pointless; the actors seem bored and so was I, and the ending is awful.",
]


def _train_bpe(special_tokens):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    return tok


def _train_wordlevel(special_tokens):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordLevelTrainer(special_tokens=special_tokens, show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A session temporary directory for the tiny models."""
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def causal_tokenizer():
    """Byte-level BPE tokenizer that adds ``<s>`` before a text (like Llama's)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _train_bpe(["<s>", "<pad>", "</s>", "<unk>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def _save(model, tokenizer, path):
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_dir, causal_tokenizer):
    """Directory of a tiny random Llama (untied input/output embeddings)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(causal_tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, initializer_range=0.5, tie_word_embeddings=False,
                         bos_token_id=causal_tokenizer.bos_token_id, eos_token_id=causal_tokenizer.eos_token_id,
                         pad_token_id=causal_tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    return _save(model, causal_tokenizer, tiny_dir / "llama")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tiny_dir, causal_tokenizer):
    """Directory of a tiny random GPT-2 (learned absolute positions)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    config = GPT2Config(vocab_size=len(causal_tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=256,
                        initializer_range=0.5, bos_token_id=causal_tokenizer.bos_token_id,
                        eos_token_id=causal_tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config)
    return _save(model, causal_tokenizer, tiny_dir / "gpt2")


@pytest.fixture(scope="session")
def roberta_tokenizer():
    """Byte-level BPE tokenizer with RoBERTa's special tokens and layout."""
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    tok = _train_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                      ("<s>", tok.token_to_id("<s>")))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                   sep_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                   mask_token=AddedToken("<mask>", lstrip=True))


@pytest.fixture(scope="session")
def bert_tokenizer():
    """Word-level tokenizer with BERT's special tokens and layout."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _train_wordlevel(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                   ("[CLS]", tok.token_to_id("[CLS]")))
    return PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]")


@pytest.fixture(scope="session")
def tiny_bert_dir(tiny_dir, bert_tokenizer):
    """Directory of a tiny random BERT masked LM."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(2)
    config = BertConfig(vocab_size=len(bert_tokenizer), hidden_size=32, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                        initializer_range=0.5, pad_token_id=bert_tokenizer.pad_token_id)
    model = BertForMaskedLM(config)
    return _save(model, bert_tokenizer, tiny_dir / "bert")


@pytest.fixture(scope="session")
def tiny_roberta_dir(tiny_dir, roberta_tokenizer):
    """Directory of a tiny random RoBERTa masked LM."""
    import torch
    from transformers import RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(3)
    config = RobertaConfig(vocab_size=len(roberta_tokenizer), hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=66,
                           initializer_range=0.5, pad_token_id=roberta_tokenizer.pad_token_id,
                           bos_token_id=roberta_tokenizer.bos_token_id, eos_token_id=roberta_tokenizer.eos_token_id)
    model = RobertaForMaskedLM(config)
    return _save(model, roberta_tokenizer, tiny_dir / "roberta")
