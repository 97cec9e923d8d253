"""Chat templates render to the text and ids of transformers' apply_chat_template (SmolLM2's own template from its
GGUF file, and Llama-3- and Qwen2-shaped templates written here), with and without a system message, and run in a
sandbox."""

import pytest

from minitune.checkpoints.load import load_tokenizer
from minitune.data.chat import ChatTemplate, TemplateError, find_chat_template, load_chat_template

transformers = pytest.importorskip("transformers")

# Shaped like Llama 3.1's: bos first, a dated system header, header/eot tokens, trimmed contents.
LLAMA3_STYLE = (
    "{{- bos_token }}\n"
    '{%- set date_string = strftime_now("%d %b %Y") %}\n'
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    '    {%- set system_message = "" %}\n'
    "{%- endif %}\n"
    '{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}\n'
    '{{- "Today Date: " + date_string + "\\n\\n" }}\n'
    '{{- system_message }}\n{{- "<|eot_id|>" }}\n'
    "{%- for message in messages %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
    "'<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)
# Shaped like Qwen2.5's: a default system turn, im_start/im_end, a role check that raises.
QWEN2_STYLE = (
    "{%- for message in messages %}\n"
    "{%- if message.role not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message.role) }}{% endif %}\n"
    "{%- if loop.first and message.role != 'system' %}\n"
    "{{- '<|im_start|>system\\nYou are Qwen, a helpful assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)
CHATS = {
    "user_only": [{"role": "user", "content": "Classify: I love this!  "}],
    "with_system": [
        {"role": "system", "content": "Answer with one label."},
        {"role": "user", "content": "Classify: I love this!"},
        {"role": "assistant", "content": "joy"},
        {"role": "user", "content": "And: what a mess."},
    ],
}


@pytest.fixture(scope="module")
def tokenizers_pair():
    """SmolLM2's tokenizer as ours and, over the very same `tokenizers` object, as transformers'."""
    ours = load_tokenizer("smollm2")
    source, _ = find_chat_template("smollm2")
    ref = transformers.PreTrainedTokenizerFast(
        tokenizer_object=ours._tok, bos_token=ours.special_tokens["bos"], eos_token=ours.special_tokens["eos"]
    )
    return ours, ref, source


@pytest.mark.parametrize("chat", sorted(CHATS))
@pytest.mark.parametrize("style", ["smollm2", "llama3", "qwen2"])
@pytest.mark.parametrize("gen", [True, False])
def test_render_and_ids_equal_apply_chat_template(tokenizers_pair, style, chat, gen):
    ours, ref, smol = tokenizers_pair
    source = {"smollm2": smol, "llama3": LLAMA3_STYLE, "qwen2": QWEN2_STYLE}[style]
    template = ChatTemplate(source, dict(ours.special_tokens))
    messages = CHATS[chat]
    text = template.render(messages, add_generation_prompt=gen)
    assert text == ref.apply_chat_template(messages, chat_template=source, tokenize=False, add_generation_prompt=gen)
    want = ref.apply_chat_template(messages, chat_template=source, tokenize=True, add_generation_prompt=gen)
    want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
    assert template.encode(ours, messages, add_generation_prompt=gen) == list(want)
    if style == "llama3":
        assert text.startswith(ours.special_tokens["bos"])  # the template's own special tokens are written


def test_smollm2_template_comes_from_the_gguf_and_ends_in_the_assistant_turn():
    tok = load_tokenizer("smollm2")
    template = load_chat_template("smollm2", tok)
    text = template.render([{"role": "user", "content": "hi"}])
    assert text.endswith("<|im_start|>assistant\n") and "SmolLM" in text  # default system turn
    assert tok.special_tokens["eos"] == "<|im_end|>"  # generation stops at the end of the assistant's turn


def test_template_errors_and_sandbox():
    with pytest.raises(TemplateError, match="unknown role tool"):
        ChatTemplate(QWEN2_STYLE, {}).render([{"role": "tool", "content": "x"}])
    with pytest.raises(TemplateError, match="does not parse"):
        ChatTemplate("{% for m in messages %}", {})
    # The sandbox refuses Python internals and mutation of the messages it is given.
    with pytest.raises(TemplateError):
        ChatTemplate("{{ messages.__class__.__mro__ }}", {}).render([])
    with pytest.raises(TemplateError):
        ChatTemplate("{{ messages.append(1) }}", {}).render([])
