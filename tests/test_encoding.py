"""Templates, answer-only masks and the truncation policy."""
from __future__ import annotations

import warnings

import pytest

from icp_influence.data import Example
from icp_influence.encoding import PAPER_HEADER, ContextTooLongWarning, encode_pair, segment_texts
from icp_influence.errors import ContextTooLongError, DataFormatError, TemplateError
from icp_influence.models import byte_tokenizer

Z = Example("z", "Add the two numbers.", "2 + 2", "4")
P = Example("p", "Add the two numbers.", "10 + 5", "15")


def test_paper_template_is_the_authors_context_verbatim():
    prefix, query, answer = segment_texts("paper", Z, P)
    assert prefix + query + answer == (
        "These examples may be helpful to answer the question\n"
        "Instruction: Add the two numbers.\nInput: 2 + 2\nResponse: 4"
        "\n\n"
        "Instruction: Add the two numbers.\nInput: 10 + 5\nResponse:" " 15"
    )
    assert prefix.startswith(PAPER_HEADER)
    assert segment_texts("paper", None, P) == ("", query, answer)
    assert segment_texts("plain", Z, P)[0] == prefix[len(PAPER_HEADER):]


def test_labels_mask_everything_but_the_answer():
    tok = byte_tokenizer()
    enc = encode_pair(tok, P, Z, template="paper")
    assert len(enc.labels) == len(enc.input_ids)
    scored = [t for t in enc.labels if t != -100]
    assert tok.decode(scored) == " 15"
    assert enc.input_ids[enc.answer_start:] == list(enc.answer_ids)


@pytest.mark.parametrize("template", ["paper", "plain", "chat"])
def test_demo_is_a_token_prefix_and_probe_tokens_are_shared(template):
    tok = byte_tokenizer()
    with_demo = encode_pair(tok, P, Z, template=template)
    base = encode_pair(tok, P, None, template=template)
    assert with_demo.query_ids == base.query_ids and with_demo.answer_ids == base.answer_ids
    assert len(with_demo.prefix_ids) > len(base.prefix_ids)


def test_chat_template_split_on_smollm2(smollm2):
    _, tok = smollm2
    prefix, query, answer = segment_texts("chat", Z, P, tok)
    full = tok.apply_chat_template(
        [{"role": "user", "content": Z.prompt}, {"role": "assistant", "content": Z.output},
         {"role": "user", "content": P.prompt}], add_generation_prompt=True, tokenize=False)
    assert prefix + query == full
    assert query.startswith("<|im_start|>user\n") and query.endswith("<|im_start|>assistant\n")
    base_prefix, base_query, _ = segment_texts("chat", None, P, tok)
    assert base_query == query and base_prefix.startswith("<|im_start|>system")


def test_unknown_template_and_empty_answer():
    tok = byte_tokenizer()
    with pytest.raises(TemplateError, match="Unknown template 'fancy'"):
        encode_pair(tok, P, Z, template="fancy")
    with pytest.raises(DataFormatError, match="empty answer"):
        encode_pair(tok, Example("e", "Say nothing.", output=""), Z)


def test_truncation_cuts_the_demonstration_from_the_left_and_warns():
    tok = byte_tokenizer()
    full = encode_pair(tok, P, Z, template="paper")
    limit = len(full) - 10
    with pytest.warns(ContextTooLongWarning, match="dropped 10 demonstration"):
        cut = encode_pair(tok, P, Z, template="paper", max_length=limit)
    assert len(cut) == limit and cut.truncated == 10
    assert cut.prefix_ids == full.prefix_ids[10:] and cut.query_ids == full.query_ids
    with pytest.raises(ContextTooLongError, match="exceed the model's context"):
        encode_pair(tok, P, Z, template="paper", max_length=limit, truncation="error")


def test_answer_is_never_truncated():
    tok = byte_tokenizer()
    with pytest.raises(ContextTooLongError, match="answer alone"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encode_pair(tok, P, Z, max_length=2)
