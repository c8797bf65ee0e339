"""Every valuator behind one interface: ``fit(train) → self``, ``score(candidates, probes) → ScoreMatrix``.

=====================  ==========================================  =============================
name                   class                                        what a positive value means
=====================  ==========================================  =============================
``icp``                :class:`Icp`                                 the demonstration raises the
                                                                    probe's answer likelihood
``inner_product``      :class:`InnerProduct`                        a gradient step on z lowers
``cosine``             :class:`Cosine`                              the probe's loss (first order)
``tracin``             :class:`TracIn`
``paper_signed_log``   :class:`PaperSignedLog`                      (the authors' transform)
``exact``              :class:`ExactInfluence`                      upweighting z lowers the
``cg``                 :class:`CgInfluence`                         probe's loss (influence
``lissa``              :class:`LissaInfluence`                      function, damped)
``ekfac``              :class:`EkfacInfluence`
``one_step``           :class:`OneStep`                             one optimiser step on z
                                                                    lowers the probe's loss
``answer_length``      :class:`AnswerLength`                        null models: one quantity of
``candidate_nll``      :class:`CandidateNll`                        the candidate, the same for
``gradient_norm``      :class:`GradientNorm`                        every probe (see
``random``             :class:`RandomScore`                         :mod:`.null_models`)
=====================  ==========================================  =============================

``make(name, model, tokenizer, **settings)`` builds any of them; ``names()`` lists them.
"""
from .base import SIGN, Valuator, get, make, model_fingerprint, names, register
from .gradient import Cosine, GradientValuator, InnerProduct, PaperSignedLog, TracIn
from .icp import Icp
from .influence_functions import CgInfluence, EkfacInfluence, ExactInfluence, InfluenceFunction, LissaInfluence
from .null_models import NULL_MODELS, AnswerLength, CandidateNll, GradientNorm, RandomScore
from .one_step import OneStep

__all__ = [
    "SIGN", "Valuator", "get", "make", "model_fingerprint", "names", "register",
    "Icp", "InnerProduct", "Cosine", "TracIn", "PaperSignedLog", "GradientValuator",
    "InfluenceFunction", "ExactInfluence", "CgInfluence", "LissaInfluence", "EkfacInfluence", "OneStep",
    "NULL_MODELS", "AnswerLength", "CandidateNll", "GradientNorm", "RandomScore",
]
