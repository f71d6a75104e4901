"""Client for the bert_squad question-answering server (MindSpore Serving), without MindSpore.

    from bert_squad_client import Client
    with Client("127.0.0.1:5500") as client:
        result = client.answer("Who wrote it?", "Ada wrote it in 1843.")
        print(result.text, result.score, result.start, result.end)

Depends on grpcio, protobuf and numpy only (tqdm for the batch command).
"""
from .client import AsyncClient, Client, Retry, Tls
from .errors import AuthenticationError, BertSquadError, DeadlineExceeded, InvalidResponse, RequestError, ServerUnavailable
from .rest import RestClient
from .results import PREDICT_MAX_ANSWER_LENGTH, Answer, Logits, Result

__all__ = [
    "Answer", "AsyncClient", "AuthenticationError", "BertSquadError", "Client", "DeadlineExceeded", "InvalidResponse", "Logits",
    "PREDICT_MAX_ANSWER_LENGTH", "RequestError", "Result", "RestClient", "Retry", "ServerUnavailable", "Tls",
]
