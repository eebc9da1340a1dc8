"""Synthetic SFT data: question-answer pairs generated from document chunks by a teacher model
(`tuneloop data synth`). The teacher is an interface (teacher.py); flows/synth.py supplies our engine
or an OpenAI-compatible upstream behind it."""

from tuneloop.data.synth.config import KINDS, SynthConfig
from tuneloop.data.synth.run import SynthResult, synthesize
from tuneloop.data.synth.teacher import Teacher, TeacherReply, TeacherRequest

__all__ = ["KINDS", "SynthConfig", "SynthResult", "Teacher", "TeacherReply", "TeacherRequest", "synthesize"]
