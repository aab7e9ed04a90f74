"""The two views of one utterance that rewiring pulls together: the pair builders (`pairs`: twin, a masked
copy; neutral, the transcript spoken by a synthesiser; mixed) and the speech synthesis behind the neutral
view (`tts`: backends, a shared disk cache and the pre-synthesis command; `espeak`: eSpeak NG through ctypes,
which the data preparers also use to synthesise and phonemize). A new kind of positive pair goes here."""
