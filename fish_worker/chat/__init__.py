"""Chat mode: a Hugging Face causal LM that writes the replies Fish Speech then speaks.

`llm.ChatModel` loads a local model directory once and streams text deltas; `tiny_chat_model` writes a
tiny random one (offline) so tests and the README demo run the real loading code.
"""
