"""Personalization for heterogeneous clients: what is shared, what stays local, and how it is protected.

When clients' environments differ (Jin et al. 2022, "Federated Reinforcement Learning with Environment
Heterogeneity", show that FedAvg-style FRL then converges to a model that is suboptimal for individual
clients), one global model can serve some clients badly. The survey of personalized FRL in
``frl-survey`` §3 groups the remedies this package implements, selected by ``[personalization] method``:

=============  ===============================================  =======================================
method         what is shared / what stays on the client        protected vector per client
=============  ===============================================  =======================================
``none``       the whole model (FedAvg, McMahan et al. 2017)     model delta (``dim`` = model size)
``local``      nothing: clients never federate (baseline)        nothing is sent
``finetune``   whole model (FedAvg); each client deploys the     model delta
               global model after its local training
``fedprox``    whole model; local loss + mu/2 ||w - w_g||^2      model delta
               (Li et al. 2020)
``ditto``      global model as FedAvg; a personal model v        model delta of the global model;
               trained with lambda/2 ||v - w_g||^2 stays local   v never leaves the client
               (Li et al. 2021)
``fedper``     body shared, last ``head_layers`` layers local    body delta only (``dim`` = body size)
               (Arivazhagan et al. 2019)
``fedrep``     as fedper; local training: head first (body       body delta only
               frozen), then body (Collins et al. 2021)
``embedding``  whole network shared; a per-client embedding     network delta; embedding stays local
               concatenated to the observation (Jin et al. 2022)
``group``      one model per environment group                   k slots (see below)
               (Nadiger et al. 2019)
``ifca``       k cluster models; each client picks the one       k slots (see below)
               serving it best (Ghosh et al. 2020)
``relation``   one model per client on the server, mixed with    model delta (plaintext only: the server
               learned similarity weights (FedAMP, Huang et al.  weighs individual updates; refused under
               2021; pFedGraph, Ye et al. 2023; :mod:`.relation`) CKKS / SecAgg)
=============  ===============================================  =======================================

Under CKKS or SecAgg the protected vector is exactly the shared part: the protocol is built for its
length, so heads, embeddings and personal models never travel, not even encrypted.

Hiding the cluster choice (``group`` and ``ifca``)
--------------------------------------------------
A cluster choice says which environment type a client has. Rather than sending ``(cluster, update)``,
each client protects one vector of k slots, ``[u * 1{j = c}, 1{j = c}]`` for ``j = 0..k-1``: its update
and a count of 1 in the slot of its cluster ``c``, zeros in the others (:mod:`.slots`). Payload sizes do
not depend on the choice, and CKKS ciphertexts or SecAgg-masked vectors do not show which slot is
non-zero, so the server aggregates all k clusters in one protected sum without learning an assignment.
Opening the sum reveals each cluster's mean update and its share of the round's clients (aggregate
counts only). Costs: k times the upload; with plaintext the server of course sees the slots. Client-level
DP and robust rules are refused with these methods (their noise / rules would apply to slot vectors).

Metrics
-------
Client rows carry ``return_global`` (the released model with the client's own local parts: its head,
embedding or cluster), ``return_local`` (after the round's local training: for ``none`` this is FedAvg
plus local fine-tuning) and ``return_personal`` (the model the client would deploy: Ditto's v, the
client's own model under ``local``, the fine-tuned global model under ``finetune``, otherwise as
``return_global``).
"""

from securefrl.personalization.checks import check_personalization
from securefrl.personalization.federations import (
    FEDERATIONS,
    ClusteredFederation,
    DittoFederation,
    FedProxFederation,
    FineTuneFederation,
    LocalOnlyFederation,
    PartialFederation,
    PersonalizedFederation,
    make_personalized_federation,
)
from securefrl.personalization.grouping import assign_groups, bin_edges
from securefrl.personalization.parts import (
    EnvEmbeddingInput,
    attach_env_embedding,
    embedding_parameter_names,
    frozen,
    head_parameter_names,
)
from securefrl.personalization.relation import RelationFederation, relation_round
from securefrl.personalization.slots import decode_slots, encode_slots, slot_length

FEDERATIONS["relation"] = RelationFederation  # registered here: relation.py builds on federations.py

__all__ = [
    "FEDERATIONS",
    "ClusteredFederation",
    "DittoFederation",
    "EnvEmbeddingInput",
    "FedProxFederation",
    "FineTuneFederation",
    "LocalOnlyFederation",
    "PartialFederation",
    "PersonalizedFederation",
    "RelationFederation",
    "assign_groups",
    "attach_env_embedding",
    "bin_edges",
    "check_personalization",
    "decode_slots",
    "embedding_parameter_names",
    "encode_slots",
    "frozen",
    "head_parameter_names",
    "make_personalized_federation",
    "relation_round",
    "slot_length",
]
