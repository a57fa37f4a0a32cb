"""One conversation turn: look the conversation up, write the reply, speak it, store the turn.

    service = ConversationService(tts, store, chat=make_chat_backend(settings.chat), settings=settings)
    for event in service.turn(TurnRequest(...), stop):   # TextDelta | SpeechChunk
        ...

Chat mode: the chat backend (a local model or a remote engine, backend.py) answers `message` given
the conversation's history, and the reply is spoken sentence by sentence while it is being written
(spoken_reply.py). TTS mode: `message` is spoken as is. Either way a conversation keeps one voice:
the reference given once (audio or a saved voice_id), else the first sentence its first reply was
spoken in; later turns are conditioned on it, so they need no reference. Store failures raise
ConversationStoreError; nothing is silently dropped. A turn whose reply fails (ChatBackendError: the
engine broke off) or is stopped stores nothing.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from fish_worker.dialogue.backend import ChatBackend
from fish_worker.dialogue.prompt import PromptTooLongError
from fish_worker.conversations import Conversation, ConversationStore, ConversationVoice
from fish_worker.conversations.model import ConversationId
from fish_worker.engine.generation import VoicePrompt
from fish_worker.dialogue.requests import Mode, TurnRequest
from fish_worker.errors import JobInputError, input_error
from fish_worker.tts.requests import SpeechChunk, SynthesisRequest
from fish_worker.tts.service import TTSService, draw_seed
from fish_worker.settings import Settings
from fish_worker.dialogue.spoken_reply import TextDelta, speak_while_writing
from fish_worker.tts.voices import VoiceStore

CONVERSATION_ACTIONS = ("end_conversation",)


class EndConversation(BaseModel):
    """`{"action": "end_conversation", "conversation_id": ...}`: forget its history and voice."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    action: Literal["end_conversation"]
    conversation_id: ConversationId


def is_conversation_action(raw: Any) -> bool:
    return isinstance(raw, dict) and raw.get("action") in CONVERSATION_ACTIONS


class ConversationService:
    def __init__(
        self,
        tts: TTSService,
        store: ConversationStore,
        *,
        settings: Settings,
        chat: ChatBackend | None = None,
        voices: VoiceStore | None = None,
    ):
        self.tts = tts
        self.store = store
        self.chat = chat
        self.settings = settings  # the chat section, and where a reply is cut into sentences
        self.voices = voices or tts.voices.store  # where a request's saved voice_id is looked up

    def for_tenant(self, tenant: str | None) -> "ConversationService":
        """This service over `tenant`'s conversations and saved voices (None: the default namespace)."""
        if tenant is None:
            return self
        return ConversationService(
            self.tts,
            self.store.for_tenant(tenant),
            chat=self.chat,
            settings=self.settings,
            voices=self.tts.voices.store.for_tenant(tenant),
        )

    def mode(self, asked: Mode | None, system_prompt: str | None = None) -> Mode:
        """The request's mode: as `asked`, else chat when a chat backend is set."""
        mode = asked or ("chat" if self.chat is not None else "tts")
        if mode == "chat" and self.chat is None:
            raise JobInputError("mode", "chat needs a chat model; set FISH_CHAT_MODEL_DIR or FISH_CHAT_BASE_URL")
        if mode == "tts" and system_prompt is not None:
            raise JobInputError("system_prompt", "is only used in chat mode")
        return mode

    def end(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Run an end_conversation action; its output says whether there was a conversation to end."""
        try:
            action = EndConversation.model_validate(raw)
        except ValidationError as exc:
            raise input_error(exc) from None
        return {"conversation_id": action.conversation_id, "ended": self.store.delete(action.conversation_id)}

    def turn(self, request: TurnRequest, stop: threading.Event) -> Iterator[TextDelta | SpeechChunk]:
        """Yield the reply's text deltas (chat mode) and one SpeechChunk per sentence; then store the turn."""
        conversation_id, mode = request.conversation_id, request.mode
        conversation = self.store.get(conversation_id) if conversation_id else None
        voice, new_voice = self._voice(request, conversation)
        # One seed for the whole turn, so a given seed reproduces both the reply and its audio.
        seed = request.speech.seed if request.speech.seed is not None else draw_seed()
        speech = dataclasses.replace(request.speech, seed=seed, voice=voice)
        if mode == "chat":
            events = self._chat_reply(request, speech, conversation, stop)
        else:
            events = self.tts.synthesize(dataclasses.replace(speech, text=request.message), stop, voices=self.voices)

        reply: list[str] = []
        for event in events:
            if isinstance(event, TextDelta):
                reply.append(event.text)
            elif conversation_id and voice is None and new_voice is None and event.codes is not None:
                new_voice = first_reply_voice(event)
            yield event
        if stop.is_set() or not conversation_id:
            return  # an abandoned turn is not stored: the user never got its reply
        if mode == "chat":
            # History and (new) voice land in one atomic write.
            self.store.append_turn(conversation_id, request.message, "".join(reply), voice=new_voice)
        elif new_voice is not None:
            self.store.set_voice(conversation_id, new_voice)

    def _voice(
        self, request: TurnRequest, conversation: Conversation | None
    ) -> tuple[VoicePrompt | None, ConversationVoice | None]:
        """The voice to speak in, and the voice to store with this turn (None: keep the stored one)."""
        reference = self.tts.voices.resolve(request.speech.voice, self.voices)  # a clip or a saved voice, else None
        if reference is not None:
            stored = ConversationVoice(codes=reference.codes.numpy(), text=reference.text, source="reference")
            return reference, stored if request.conversation_id else None
        if conversation is not None and conversation.voice is not None:
            kept = conversation.voice
            return VoicePrompt(text=kept.text, codes=torch.from_numpy(np.array(kept.codes)).to(torch.int)), None
        return None, None

    def _chat_reply(
        self, request: TurnRequest, speech: SynthesisRequest, conversation: Conversation | None, stop: threading.Event
    ) -> Iterator[TextDelta | SpeechChunk]:
        history = conversation.history() if conversation is not None else []
        assert self.chat is not None, "mode() refuses chat mode without a chat backend"
        try:
            deltas = self.chat.stream_reply(
                history + [{"role": "user", "content": request.message}],
                temperature=speech.temperature,
                max_new_tokens=request.reply_tokens,
                system_prompt=request.system_prompt or self.settings.chat.system_prompt or None,
                seed=speech.seed,
            )
        except PromptTooLongError as exc:
            raise JobInputError("message", str(exc)) from None

        def speak(sentences, halt):
            return self.tts.synthesize(dataclasses.replace(speech, sentences=sentences), halt, voices=self.voices)

        return speak_while_writing(
            deltas, speak, max_sentence_chars=self.settings.sentence_max_chars, stop=stop, language=speech.language
        )


def first_reply_voice(chunk: SpeechChunk) -> ConversationVoice:
    """A conversation without a reference keeps the voice its first spoken sentence happened to have."""
    if chunk.codes is None:
        raise ValueError("only a sentence's last chunk carries its codes")
    return ConversationVoice(codes=chunk.codes.numpy(), text=chunk.sentence or chunk.text, source="first_reply")
