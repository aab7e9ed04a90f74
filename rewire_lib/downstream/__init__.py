"""The library under the six downstream recipes (recipes/{pr,asr,ks,ic,sid,er}): one shared Brain
(`brain.DownstreamBrain`), the utterance classifier KS/SID/ER share, heads, data and label helpers,
the feature cache, and what goes around a run (`run`). Each recipe's train.py holds its flow."""
