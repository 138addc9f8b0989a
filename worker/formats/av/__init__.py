"""Audio and video families: ISO-BMFF (MP4, MOV, M4A, 3GP), Matroska/WebM, Ogg, MP3, FLAC, WAV, AIFF, AMR,
with the ffmpeg remux (``av_rebuild``) and the verifier's walks (``av_inspect``, ``audio_inspect``) they share;
``stream_proof`` (the verifier's byte proof of an ISO-BMFF stream copy) and ``keyframes`` (where the
input's decode sample starts) each walk one ISO-BMFF file's sample tables for their own purpose."""
