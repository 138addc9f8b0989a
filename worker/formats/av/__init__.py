"""Audio and video families: ISO-BMFF (MP4, MOV, M4A, 3GP), Matroska/WebM, Ogg, MP3, FLAC, WAV, AIFF, AMR,
with the ffmpeg remux (``av_rebuild``) and the verifier's walks (``av_inspect``, ``audio_inspect``) they share;
``movie`` (what an ISO-BMFF file's tracks are: our walk in place of ffprobe) and ``stream_proof``
(the verifier's byte proof of an ISO-BMFF stream copy) each walk one file's boxes for their own purpose."""
