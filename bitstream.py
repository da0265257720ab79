"""The gvcc bitstream, format version 3: the specification, and a reader and writer for it.

This docstring is the format specification. Only the decoder is normative: a stream is valid when a decoder that
follows section 9 accepts it. The code below implements this text and cites its sections. It imports only the
Python standard library, so a reader can learn the whole format from this one file.


1. Overview
-----------
A gvcc file holds one video clip, or a contiguous run of its GOPs (groups of pictures): a *part*, as a sharded
encoder writes it (section 11). It is a header followed by the GOPs in display order. The header carries every
setting the decoder needs, all as integers: mode, model, codebook generator, sizes, frame count, frame rate,
sampler settings, K, M, seed and prompt. Each GOP carries its coded still frames
(I2V and FLF2V), its tail latent residual (when enabled) and its codebook symbols. For each SDE step and each
latent frame these are the index set of the chosen atoms, coded as one combinatorial rank, then one sign bit
per atom. The header ends in a CRC-32 and so does every GOP. The file size is the rate: there is no other
container, and nothing is left out of the count. GOPs are self-delimiting (each starts with its size), so a
decoder finds GOP g by stepping over the sizes of the GOPs before it, and decodes only the GOPs it is asked for
when the mode allows it (section 9.1).


2. Conventions
--------------
- The whole file is read as one string of bits, most significant bit of each byte first. An integer of n bits,
  written u(n), is therefore stored MSB first. When it is byte aligned and n is a multiple of 8 this is
  big-endian byte order. Every field outside the codebook section (section 5.3) is byte aligned and a whole
  number of bytes long.
- f(n): n bits with a fixed value, always zero in version 3.
- b(8*n): a string of n bytes, copied as is.
- The one exception to big-endian order is the residual blob (section 6). Its float32 scales are little-endian
  IEEE 754 binary32, as numpy writes '<f4', and its 16-bit values are little-endian too.
- CRC-32 is the CRC of zlib, PNG and Ethernet (reflected polynomial 0xEDB88320, initial value 0xFFFFFFFF, final
  XOR 0xFFFFFFFF). crc32(b"123456789") = 0xCBF43926. It is stored as u(32).
- C(n, k) is the binomial coefficient, 0 when k > n. RankBits(m) = ceil(log2 C(K, m)), the bit length of
  C(K, m) - 1, which is 0 when m = K. All of this is exact integer arithmetic: no value the decoder parses
  depends on a floating-point result.


3. File layout
--------------
    +--------------------------------+--------+------------------+------------------+-----+------------------+
    | header (84 + model_len         | [lead] | GOP first_gop    | GOP first_gop+1  | ... | GOP first_gop    |
    |         + prompt_len bytes)    |        | (gop_size + 8)   | (gop_size + 8)   |     |   + gop_count - 1|
    +--------------------------------+--------+------------------+------------------+-----+------------------+

    header: | fixed fields (80 bytes) | model | prompt | header_crc (4) |

    lead:   | lead_size (4) | lead_still | lead_crc (4) |       only in a flf2v part with first_gop > 0
            lead_size u(32) is the still's length in bytes (limits as still_size); lead_crc is the CRC-32 of
            lead_size and the still, every lead byte before it (as gop_crc covers its GOP)

A complete stream has first_gop = 0 and gop_count = NumGops, and no lead.

    GOP:    | gop_size (4) | [still_size (4) | still] x NumStills | [residual_size (4) | residual] | codebook
            | zero bits to the byte boundary | gop_crc (4) |

Nothing may follow the last GOP.


4. Header
---------
    offset  size  element             descriptor   value
    ------  ----  ------------------  -----------  ---------------------------------------------------------
       0      4   magic               b(32)        "GVCC" (47 56 43 43)
       4      1   version             u(8)         3 (an older stream is refused: re-encode its source; version 3
                                                   added dit_period and made model_fingerprint a hash of every
                                                   tensor, version 2 added the text context length, the
                                                   residual bit depth and lossless stills)
       5      1   mode                u(8)         0 = t2v, 1 = i2v, 2 = flf2v
       6      -   residual            u(1)         1: every GOP carries a tail latent residual (bit 7 of byte 6)
       6      -   precision           u(1)         network precision of the encoder (bit 6 of byte 6): 0 = float32,
                                                   1 = bfloat16 with float32 islands (see gvcc.py)
       6      -   still_lossless      u(1)         1: the stills are lossless PNG files instead of AVIF (bit 5 of
                                                   byte 6); 0 in t2v
       6      -   reserved_zero       f(5)         0 (bits 4..0 of byte 6)
       7      1   still_quality       u(8)         AVIF quality of the stills, 0..100; 0 in t2v and with
                                                   still_lossless
       8      4   model_fingerprint   u(32)        identifies the weights: the first 4 bytes of a SHA-256 over
                                                   every tensor of every weight file the model reads (gvcc.py's
                                                   docstring, "Weights and the model fingerprint"; from version 3
                                                   on, version 2's covered a few small tensors)
      12      2   generator           u(16)        codebook generator id, >= 1 (gvcc.py, "Codebooks"):
                                                   1 = i.i.d. atoms from Philox4x32-10 + gvcc's Gaussian
                                                   transform v1 (the paper's); 2 = circular shifts of one
                                                   such Gaussian vector after a fixed permutation (K <= D)
      14      2   src_width           u(16)        source width in pixels (rates are quoted against it)
      16      2   src_height          u(16)        source height in pixels
      18      2   width               u(16)        working width: the codec runs at it and the decoder outputs it
      20      2   height              u(16)        working height
      22      2   gop_frames          u(16)        G, frames per GOP, 4k+1
      24      4   frames              u(32)        source frame count: the decoder outputs exactly this many
      28      4   fps_num             u(32)        frame rate numerator, >= 1
      32      4   fps_den             u(32)        frame rate denominator, >= 1
      36      2   steps               u(16)        T, sampler steps
      38      2   tail_steps          u(16)        ODE steps at the end that carry no bits, <= steps
      40      4   g_scale_q           u(32)        diffusion scale g_scale in thousandths (3.0 -> 3000)
      44      4   shift_q             u(32)        time-grid shift in thousandths (3.0 -> 3000), >= 1
      48      4   K                   u(32)        codebook size (atoms per step and latent frame)
      52      2   M                   u(16)        atoms chosen per step in an ordinary latent frame
      54      2   M_tail              u(16)        atoms chosen per step in the last tail_frames latent frames
      56      1   tail_frames         u(8)         number of latent frames at the end of a GOP that use M_tail
      57      1   model_len           u(8)         length of model in bytes
      58      2   prompt_len          u(16)        length of prompt in bytes
      60      4   seed                u(32)        seed of the initial latent and of the codebooks
      64      2   text_len            u(16)        rows of the padded text context the DiT attends to (512 as
                                                   upstream Wan; 226 as the authors' T2V runs); the prompt's
                                                   tokens are cut to text_len - 1 plus EOS
      66      1   residual_bits       u(8)         bits per value of the tail residual: 4, 8 or 16 (the encoder
                                                   writes 8 when residual = 0)
      67      1   dit_period          u(8)         model-call schedule, 1..8: an SDE step k with k % dit_period
                                                   != 0 does not call the model and reuses its last clean
                                                   estimate (gvcc.py, "Model-call schedule"); 1 = every step
      68      4   first_gop           u(32)        index of the first GOP this file holds (0 in a complete stream)
      72      4   gop_count           u(32)        number of GOPs this file holds, >= 1
      76      4   clip_crc            u(32)        identifies the source clip (section 11); not used to decode
      80      *   model               b(8*model_len)   model name from gvcc's MODELS table, printable ASCII
       *      *   prompt              b(8*prompt_len)  text prompt, UTF-8
       *      4   header_crc          u(32)        CRC-32 of every header byte before it (offset 0 on)


5. GOP
------
5.1 Syntax

    gop( g ) {                                                           descriptor
        gop_size                                                         u(32)
        for ( i = 0; i < NumStills( g ); i++ ) {
            still_size                                                   u(32)
            still                                                        b(8*still_size)
        }
        if ( residual ) {
            residual_size                                                u(32)
            residual_data                                                b(8*residual_size)
        }
        for ( j = 0; j < SdeSteps; j++ )
            for ( f = 0; f < LatentFrames( g ); f++ ) {
                m = AtomsForFrame( f, LatentFrames( g ) )
                index_rank[ j ][ f ]                                     u(RankBits(m))
                for ( i = 0; i < m; i++ )
                    sign[ j ][ f ][ i ]                                  u(1)
            }
        while ( !byte_aligned( ) )
            zero_bit                                                     f(1)
        gop_crc                                                          u(32)
    }

5.2 Semantics
- gop_size: the number of bytes after gop_size and before gop_crc. A GOP is gop_size + 8 bytes long. The
  codebook part has a length fixed by the header (section 5.3), so gop_size must equal
  sum over stills (4 + still_size) + (4 + residual_size if residual) + CodebookBytes( g ).
- gop_crc: the CRC-32 of every byte of the GOP before it, from gop_size on.
- still: one coded still frame at the working size width x height: an AVIF file, or a PNG file (8-bit RGB,
  lossless: IHDR bit depth 8 and colour type 2, so no palette, grey, alpha or 16-bit samples) when
  still_lossless = 1. NumStills( g ) and which frame each still shows are given in section 7.
- residual_data: the tail residual blob of section 6.
- SdeSteps = min(steps - tail_steps, steps - 1). Only the first SdeSteps sampler steps inject codebook atoms.
  The tail steps carry no bits, and the last step (the one that lands on t = 0) is always a tail step, as in
  the authors' sampler, even when tail_steps = 0. SdeSteps may be 0, and then a GOP has no codebook symbols
  (a valid stream, which gvcc's encoder refuses to write: it would code nothing of the source).
- AtomsForFrame( f, L ) = M_tail if f >= L - tail_frames, else M. Latent frame f is one of the L latent frames
  of the GOP, L = LatentFrames( g ). In a short last GOP with L <= tail_frames, every frame uses M_tail.
- index_rank[ j ][ f ]: the lexicographic rank (section 5.4) of the set S of atom indices chosen at SDE step j
  for latent frame f. S has m distinct elements in 0..K-1, and index_rank < C(K, m).
- sign[ j ][ f ][ i ]: the sign of the atom with the i-th smallest index in S. 0 = +1, 1 = -1.
- Bits per (step, latent frame) = RankBits(m) + m. CodebookBits( g ) is their sum over the GOP, and
  CodebookBytes( g ) = ceil(CodebookBits( g ) / 8).

5.3 Bit packing
The codebook section starts on a byte boundary, just after the last byte-aligned field of the GOP. Its fields
follow each other with no gaps, MSB first, in the loop order above: for each j, then for each f, the rank and
then the m sign bits. Zero bits fill the last byte.

5.4 Lexicographic rank of an index set
Write S sorted ascending as c_0 < c_1 < ... < c_{m-1}. rank(S) is the number of m-element subsets of 0..K-1
whose ascending sequence comes before (c_0, ..., c_{m-1}) in lexicographic order. With c_{-1} = -1:

    rank(S) = sum_{i=0}^{m-1}  sum_{v=c_{i-1}+1}^{c_i - 1}  C(K - 1 - v, m - 1 - i)

The inner term counts the subsets that agree with S before position i and put the smaller value v at position i.
The rank of {0, 1, ..., m-1} is 0 and the rank of {K-m, ..., K-1} is C(K, m) - 1.

Worked example, K = 5, m = 2. C(5, 2) = 10, so RankBits = 4. In order the subsets are
    {0,1}=0 {0,2}=1 {0,3}=2 {0,4}=3 {1,2}=4 {1,3}=5 {1,4}=6 {2,3}=7 {2,4}=8 {3,4}=9
For S = {1, 3}: position 0 skips v = 0, which adds C(4, 1) = 4, and position 1 skips v = 2, which adds C(2, 0) = 1.
So rank = 5. With signs (+, -), the symbol is u(4) = 0101 and then the sign bits 0 1, giving the bits 010101.

combination_rank below computes this by walking v from 0 to K-1 once. It keeps the one binomial the walk needs
and updates it with one small-integer multiply and divide per step: C(n-1, k) = C(n, k) (n-k) / n and
C(n-1, k-1) = C(n, k) k / n. At K = 16384, M = 128 this takes milliseconds, and a port needs only big-integer
addition, comparison, and multiplication and division by small integers.
The same rank mirrored, e_i = K - 1 - c_i (the inner sums telescope by Pascal's rule), is a sum of one binomial
per position, the combinatorial number system:

    C(K, m) - 1 - rank(S) = sum_{i=0}^{m-1} C(e_i, m - i),      e_0 > e_1 > ... > e_{m-1} >= 0

(in the example, e = (3, 1): C(3, 2) + C(1, 1) = 4 = 10 - 1 - 5). So a decoder recovers S position by position:
e_i is the largest e < e_{i-1} with C(e, m - i) not above what is left of that sum. combination_unrank walks
down from e_{i-1} - 1 with the same one-binomial updates, and where the gap to e_i is long it jumps instead: a
float estimate from log-gamma names the candidate, one exact binomial and a one-step check each way confirm it
(the floats only choose where to look; the result is exact). A position then costs at most one binomial and
about 24 + m / 8 walk steps, whatever the rank, so a forged rank costs at most about twice what an ordinary one
of the same K and m does (bench/bench_fuzz.py measures both per byte of codebook).

6. Tail residual blob
---------------------
    residual_data = scales || zlib( q )
    scales: n_channels float32, little-endian    one per latent channel, finite and >= 0
    q:      n_values unsigned integers           channel-major, q[(c * h + y) * w + x], each of residual_bits
                                                 bits stored in one byte (4 and 8 bits) or in two bytes,
                                                 little-endian (16 bits); zlib is an RFC 1950 stream, any level

The residual covers the last latent frame of the GOP as the DiT sees it: n_channels = C = 16 and
n_values = C * h * w, where h = 2 ceil(height / 16) and w = 2 ceil(width / 16) (section 7 of gvcc.py's
docstring: the latent of the working frame, padded to even height and width). With b = residual_bits and
L = 2^b - 1 the dequantised residual of channel c is, in float32 and in this order of operations,
    r = ((q * 2) / L - 1) * scale_c
gvcc.py adds it to the final latent of that frame before the padding is cropped and the VAE decodes. In I2V mode
that corrected frame is also the next GOP's reference. The decoder decompresses no more than
n_values * ValueBytes + 1 bytes (ValueBytes = 1 for 4 and 8 bits, 2 for 16), and rejects the blob unless
residual_size > 4 * n_channels, every scale is a finite float32 >= 0 (NaN, infinities and negative numbers are
rejected; -0.0 is accepted and acts as 0), the output is exactly n_values * ValueBytes bytes, the zlib stream
ends there with no trailing data, and every 4-bit value is at most 15.
The residual is defined the same way in every mode (its last latent frame, the same arithmetic); gvcc's encoder
writes one in i2v only, as the authors' method has it, and a decoder applies it wherever residual = 1.

This is the authors' quantiser (CCdydy/GVCC, exp_i2v/run_uvg_chained_gop.py): scale_c = max(max |r_c|, 1e-6),
q = round((r / scale_c + 1) L / 2), zlib level 9. Their blob is zlib( q ) alone, with the scales kept outside
the count; gvcc sends the scales too. (Their 16-bit option stores int16 and reads values above 32767 back as
negative numbers; gvcc's unsigned reading is what they meant, and writes the same bytes.)


7. GOP layout (normative)
-------------------------
G = gop_frames. The source frames 0..frames-1 are split into GOPs:
- t2v: the GOPs do not overlap. GOP g covers frames [g G, g G + G), and NumGops = ceil(frames / G).
- i2v, flf2v: the stride is G - 1, so consecutive GOPs share their boundary frame. GOP g covers frames
  [g (G-1), g (G-1) + G), and NumGops = ceil((frames - 1) / (G - 1)).
For each GOP:
- first_frame is g G (t2v) or g (G - 1) (i2v and flf2v).
- n_frames = min(G, frames - first_frame).
- n_padded = 4 ceil((n_frames - 1) / 4) + 1. A short last GOP is padded to this length by repeating its last
  frame.
- LatentFrames( g ) = (n_padded - 1) / 4 + 1.
- NumStills( g ) and the frames the stills show, in display order. t2v has none. In i2v, GOP 0 has 1 still, of
  frame 0; a later GOP is conditioned on the decoded last frame of the GOP before it. In flf2v, GOP 0 has 2
  stills, of frame 0 and of its last frame first_frame + n_frames - 1, and every later GOP has 1 still, of its
  last frame; its first frame is conditioned on the previous GOP's last still.
Output: of GOP 0 the decoder outputs all n_frames frames (padding dropped). Of each later GOP it outputs frames
1..n_frames-1 in i2v and flf2v, because the GOP's frame 0 is the previous GOP's last frame, and all n_frames in
t2v. That is exactly `frames` frames. OutputFrames( g ) names these source frames: [first_frame, first_frame +
n_frames) for GOP 0 and in t2v, [first_frame + 1, first_frame + n_frames) for a later i2v / flf2v GOP. The
GOPs' output frames do not overlap and cover 0..frames-1 in order.


8. Limits
---------
Every size field has a maximum. The decoder checks each one before it allocates anything that depends on the
field, so a forged header cannot make it allocate more than these limits allow. Reading a stream (open_stream)
takes time linear in its length and keeps 8 bytes per GOP besides the stream's bytes; a GOP's symbols are
unpacked one (step, latent frame) at a time, when the GOP is decoded.

    element                           limit
    --------------------------------  ---------------------------------------------------------------------
    src_width, src_height             1 .. 65535
    width, height                     1 .. 4096
    frames                            1 .. 262144 (2^18); >= 2 in i2v and flf2v
    first_gop, gop_count              gop_count >= 1 and first_gop + gop_count <= NumGops; first_gop = 0 in i2v
    gop_frames                        5 .. 257, and gop_frames = 1 (mod 4)
    steps                             1 .. 1000;  tail_steps 0 .. steps
    K                                 2 .. 65536
    M, M_tail                         1 .. min(K, 4096); M_tail = M when tail_frames = 0
    tail_frames                       0 .. (gop_frames - 1) / 4 + 1
    model_len                         1 .. 64
    prompt_len                        0 .. 16384
    still_size, lead_size             1 .. 2^24 (16 MiB)
    residual_size                     1 .. 2^24 (16 MiB); n_channels 1 .. 64, n_values 0 .. 2^22
    residual_bits                     4, 8 or 16
    text_len                          1 .. 4096
    gop_size                          0 .. 2^30 (1 GiB)
    g_scale_q                         0 .. 10^6;  shift_q 1 .. 10^6
    fps_num, fps_den                  1 .. 2^32 - 1;  still_quality 0 .. 100 (0 in t2v and with still_lossless)
    still_lossless                    0 .. 1 (0 in t2v)
    generator                         1 .. 65535
    dit_period                        1 .. 8


9. Decoder obligations (normative)
----------------------------------
A decoder reads the header, the lead (section 3) and then GOPs first_gop .. first_gop + gop_count - 1 (all
NumGops GOPs in a complete stream), in this order. It rejects the stream with an error, and
outputs nothing, when any of these checks fails:
- magic is not "GVCC", or version is not 2. Both are checked before anything else.
- The stream ends before a field it needs.
- header_crc, lead_crc or a gop_crc does not match. Each is checked before the fields it covers are interpreted, except
  the lengths needed to find it (model_len and prompt_len, gop_size), which are first checked against their
  limits and against the bytes present.
- mode > 2, a reserved bit or a padding bit is not zero, a field is outside its limit (section 8), model is not
  printable ASCII (0x21..0x7E), or prompt is not valid UTF-8.
- gop_size does not match the GOP's contents.
- The lead is missing where section 3 requires it, or bytes follow the last GOP (GOP first_gop + gop_count - 1).
- An index_rank is >= C(K, m) (checked for the whole stream before any GOP is decoded, without unranking).
- A residual blob breaks section 6 (checked when it is unpacked).
- A still is not an image of the kind still_lossless names (AVIF, or a PNG of bit depth 8 and colour type 2, 8-bit
  RGB) of exactly width x height: its declared size is checked before its pixels are decoded, so a forged size
  costs nothing, and the decoded image's size again after, and any failure to decode it is an error naming the GOP
  and the still. The declared size of an AVIF is that of its ispe property associated (ipma) with the primary item
  (pitm), as libavif reads it; of a PNG, its IHDR chunk.
It then decodes each GOP as gvcc.py's docstring describes. It uses model_fingerprint and generator to refuse a
stream made for weights or a generator it does not have, and a generator 2 stream whose K exceeds the shifts of
one latent frame, D = 16 (H/8) (W/8) with H, W the working size rounded up to multiples of 16. It outputs frames
per section 7 at width x height: the
OutputFrames of GOPs first_gop .. first_gop + gop_count - 1. A part starting at first_gop > 0 decodes on its own:
in flf2v the first frame of GOP first_gop is conditioned on the lead still, which is the last still of GOP
first_gop - 1; t2v GOPs need nothing else. clip_crc is not checked by a decoder.

9.1 Random access
A decoder asked for GOPs A..B-1 of a stream (first_gop <= A < B <= first_gop + gop_count) checks the header, steps
over the GOPs before A by their gop_size fields (each checked against its limit and the bytes present) and then
checks and decodes GOPs A..B-1 completely, outputting their OutputFrames. Its output equals those frames of a
decoder that decodes everything. In t2v a GOP depends on nothing else. In flf2v GOP A > first_gop needs the last
still of GOP A-1, which it takes from that GOP after checking its gop_crc (or from the lead when A = first_gop).
In i2v each GOP after the first is conditioned on the decoded last frame of the GOP before it, so GOP A needs
GOPs 0..A-1 decoded first: random access in i2v is decoding from GOP 0 and dropping the frames before GOP A.

Resource limits are the decoder's policy, not the format's: like dav1d's frame size limit, gvcc refuses a valid
stream whose frame size, frame count or estimated peak memory exceeds what it is allowed (`decode --max-pixels`,
`--max-frames`, and the memory available), with an error before any work.


10. Encoder obligations
-----------------------
- Write every field within its limits, with zero reserved and padding bits. Write fps as a reduced fraction.
- Send each index set as the sorted set S of the atoms chosen by the matching in gvcc.py, and the sign of each
  atom, with zero counted as +.
- Code the stills of section 7 at the working size, with AVIF quality still_quality, or losslessly as PNG when
  still_lossless = 1. Encoder and decoder both condition on the decoded stills, never on the source frames.
- When residual = 1, write in each GOP the blob of section 6 for the GOP's last latent frame, made from that
  frame's final latent as the decoder will compute it.
- Write clip_crc as section 11 defines it, the same value in every part of a clip.


11. Parts and concatenation
---------------------------
An encoder may code GOPs A..B-1 of a clip alone (t2v and flf2v GOPs do not depend on each other's coding; i2v
parts start at GOP 0). It writes a part: the header of the whole clip (frames is the whole clip's count) with
first_gop = A and gop_count = B - A, the lead when section 3 asks for it, and the GOPs exactly as a one-process
encoder writes them. A part is a valid stream in its own right (section 9).

ClipKey of a header = CRC-32 of its bytes before header_crc with the eight bytes of first_gop and gop_count read
as zero. It covers every setting and clip_crc, so two parts made with different settings, weights, prompt or
clip differ in ClipKey. Parts P_0 .. P_n-1 join into one stream (`gvcc.py concat`) when each is valid, all
have the same ClipKey, P_0 has first_gop = 0, each P_i+1 starts where P_i ends, and the last ends at NumGops.
`gvcc.py concat` checks each part as a decoder does before it loads any network (section 9: framing, CRCs,
limits, ranks, the lead and every still decoded at width x height, every residual blob, a model and generator
it has); only model_fingerprint, which needs the weight files, is left to the decoder of the joined stream.
(concat in this file checks the framing, ranks and ClipKeys, not the stills and residuals: it has no image
decoder.)
The joined stream is the header with first_gop = 0 and gop_count = NumGops (and its new header_crc), followed
by every part's GOP bytes unchanged (leads dropped). It is byte-identical to a one-process encode of the clip,
because every GOP's bytes, gop_crc included, depend only on the header's ClipKey fields and on the GOP.

clip_crc: gvcc computes it as the CRC-32 over the source's key frames, the uint8 RGB bytes (row-major
[H, W, 3], source size, before any resizing) of frame first_frame of every GOP in order (section 7), so that a
shard reads only NumGops frames of a seekable input to compute it. It tells clips apart that share every
setting; two clips that agree in every key frame are not told apart. clip_crc is informative: no decoder reads
it, and concat only compares it for equality. The RGB bytes are those gvcc's reader makes of the input (media.py:
the colour conversion of .y4m, .yuv and video files, the range it assumes), so another encoder may compute
another value for the same file; the parts of one clip must come from the same encoder and input.
"""
import math
import struct
import zlib
import dataclasses
from array import array
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple


# ==================================================================================================
# Constants and limits (spec sections 4 and 8)
# ==================================================================================================

MAGIC = b"GVCC"
VERSION = 3
MODES = ("t2v", "i2v", "flf2v")          # mode field value -> name

MAX_SRC_SIZE = 65535
MAX_SIZE = 4096                          # working width and height
MAX_FRAMES = 1 << 18
MIN_GOP_FRAMES, MAX_GOP_FRAMES = 5, 257
MAX_STEPS = 1000
MIN_K, MAX_K = 2, 65536
MAX_M = 4096
MAX_MODEL_LEN = 64
MAX_PROMPT_LEN = 16384
MAX_STILL_SIZE = 1 << 24
MAX_RESIDUAL_SIZE = 1 << 24
MAX_RESIDUAL_CHANNELS = 64
MAX_RESIDUAL_VALUES = 1 << 22            # quantised values in one residual blob
RESIDUAL_BITS = (4, 8, 16)
MAX_TEXT_LEN = 4096
MAX_GOP_SIZE = 1 << 30
MAX_Q = 10 ** 6                          # g_scale_q, shift_q
MAX_DIT_PERIOD = 8

# The 64 bytes after the magic are fixed-width fields: (element, size in bytes), in file order, each u(8*size).
# Byte 6 ("flags") holds residual u(1), precision u(1), still_lossless u(1) and reserved_zero f(5).
HEADER_FIELDS = (
    ("version", 1), ("mode", 1), ("flags", 1), ("still_quality", 1),
    ("model_fingerprint", 4), ("generator", 2),
    ("src_width", 2), ("src_height", 2), ("width", 2), ("height", 2),
    ("gop_frames", 2), ("frames", 4), ("fps_num", 4), ("fps_den", 4),
    ("steps", 2), ("tail_steps", 2), ("g_scale_q", 4), ("shift_q", 4),
    ("K", 4), ("M", 2), ("M_tail", 2), ("tail_frames", 1),
    ("model_len", 1), ("prompt_len", 2), ("seed", 4), ("text_len", 2), ("residual_bits", 1), ("dit_period", 1),
    ("first_gop", 4), ("gop_count", 4), ("clip_crc", 4),
)
FIXED_HEADER_BYTES = 80                  # magic + HEADER_FIELDS
PART_FIELDS = slice(68, 76)              # first_gop and gop_count: the bytes ClipKey reads as zero
GOP_FRAMING_BYTES = 8                    # gop_size + gop_crc


class BitstreamError(Exception):
    """A stream (or a stream about to be written) breaks the gvcc format; the message is one line."""


# ==================================================================================================
# Header and GOP objects
# ==================================================================================================

@dataclass(frozen=True)
class Header:
    mode: str                # 't2v' | 'i2v' | 'flf2v'
    model: str               # model name from gvcc's MODELS table (printable ASCII, e.g. 't2v-1.3B')
    model_fingerprint: int   # u32, identifies the weights (gvcc.py, "Weights and the model fingerprint")
    generator: int           # codebook generator id (1 = i.i.d. Philox atoms, 2 = shifts of one vector)
    src_width: int           # source video width (rates are quoted against it)
    src_height: int          # source video height
    width: int               # working width the codec runs at and the decoder outputs
    height: int              # working height
    frames: int              # source frame count (the decoder outputs exactly this many)
    fps_num: int             # frame rate numerator
    fps_den: int             # frame rate denominator
    gop_frames: int          # 4k+1 (33)
    steps: int               # T (20)
    tail_steps: int          # ODE steps at the end, no bits (3)
    g_scale_q: int           # g_scale in thousandths (3.0 -> 3000)
    shift_q: int             # shift in thousandths
    K: int                   # codebook size
    M: int                   # atoms per (SDE step, latent frame)
    M_tail: int              # atoms in the last `tail_frames` latent frames of a GOP (= M when tail_frames = 0)
    tail_frames: int         # latent frames at the end of each GOP that use M_tail
    seed: int                # u32
    still_quality: int       # AVIF quality of coded still frames (0 when the mode has none)
    residual: int            # 1: each GOP carries a tail latent residual (I2V)
    prompt: str              # UTF-8 text prompt
    precision: int = 0       # networks' precision at the encoder: 0 float32, 1 bfloat16 (fp32 islands)
    text_len: int = 512      # rows of the padded text context (512 upstream Wan, 226 the authors' T2V)
    residual_bits: int = 8   # bits per tail residual value: 4, 8 or 16
    still_lossless: int = 0  # 1: stills are lossless PNG instead of AVIF
    first_gop: int = 0       # first GOP the file holds (0 in a complete stream)
    gop_count: int = None    # GOPs the file holds; None (written as NumGops - first_gop): through the last GOP
    clip_crc: int = 0        # identifies the source clip (spec section 11)
    dit_period: int = 1      # SDE steps k with k % dit_period != 0 reuse the model's last x0 estimate (gvcc.py)


@dataclass
class Gop:
    symbols: list            # [sde step j][latent frame f] -> (indices sorted ascending, signs 0 = + / 1 = -)
    stills: list = field(default_factory=list)   # bytes of each AVIF still this GOP introduces, display order
    residual: bytes = b""    # packed tail residual blob (b"" when header.residual == 0)

    def symbol(self, j, f):
        """(indices, signs) of SDE step j, latent frame f, as GopRecord.symbol gives them."""
        return self.symbols[j][f]


class GopInfo(NamedTuple):
    first_frame: int         # first source frame the GOP covers
    n_frames: int            # source frames it covers
    n_padded: int            # n_frames padded up to 4k+1 by repeating the last frame
    latent_frames: int       # (n_padded - 1) / 4 + 1
    n_stills: int            # stills the GOP carries


def _check_range(name, value, lo, hi):
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BitstreamError(f"header: {name} = {value!r} is outside {lo}..{hi}")


def check_header(h):
    """Raise BitstreamError unless every header field is within the format's limits (spec section 8)."""
    if h.mode not in MODES:
        raise BitstreamError(f"header: unknown mode {h.mode!r} (expected one of {', '.join(MODES)})")
    if not isinstance(h.model, str) or not 1 <= len(h.model) <= MAX_MODEL_LEN or \
            any(not 0x21 <= ord(ch) <= 0x7E for ch in h.model):
        raise BitstreamError(f"header: model name {h.model!r} is not 1..{MAX_MODEL_LEN} printable ASCII characters")
    if not isinstance(h.prompt, str):
        raise BitstreamError("header: prompt is not a string")
    try:
        prompt_len = len(h.prompt.encode("utf-8"))
    except UnicodeEncodeError:
        raise BitstreamError("header: prompt cannot be encoded as UTF-8 (lone surrogate)") from None
    if prompt_len > MAX_PROMPT_LEN:
        raise BitstreamError(f"header: prompt is {prompt_len} bytes, the limit is {MAX_PROMPT_LEN}")
    _check_range("model_fingerprint", h.model_fingerprint, 0, 0xFFFFFFFF)
    _check_range("generator", h.generator, 1, 0xFFFF)
    _check_range("src_width", h.src_width, 1, MAX_SRC_SIZE)
    _check_range("src_height", h.src_height, 1, MAX_SRC_SIZE)
    _check_range("width", h.width, 1, MAX_SIZE)
    _check_range("height", h.height, 1, MAX_SIZE)
    _check_range("frames", h.frames, 1 if h.mode == "t2v" else 2, MAX_FRAMES)
    _check_range("fps_num", h.fps_num, 1, 0xFFFFFFFF)
    _check_range("fps_den", h.fps_den, 1, 0xFFFFFFFF)
    _check_range("gop_frames", h.gop_frames, MIN_GOP_FRAMES, MAX_GOP_FRAMES)
    if h.gop_frames % 4 != 1:
        raise BitstreamError(f"header: gop_frames = {h.gop_frames} is not of the form 4k+1")
    _check_range("steps", h.steps, 1, MAX_STEPS)
    _check_range("tail_steps", h.tail_steps, 0, h.steps)
    _check_range("g_scale_q", h.g_scale_q, 0, MAX_Q)
    _check_range("shift_q", h.shift_q, 1, MAX_Q)
    _check_range("K", h.K, MIN_K, MAX_K)
    _check_range("M", h.M, 1, min(h.K, MAX_M))
    _check_range("M_tail", h.M_tail, 1, min(h.K, MAX_M))
    _check_range("tail_frames", h.tail_frames, 0, (h.gop_frames - 1) // 4 + 1)
    if h.tail_frames == 0 and h.M_tail != h.M:
        raise BitstreamError(f"header: M_tail = {h.M_tail} differs from M = {h.M} but tail_frames is 0")
    _check_range("seed", h.seed, 0, 0xFFFFFFFF)
    _check_range("still_lossless", h.still_lossless, 0, 0 if h.mode == "t2v" else 1)
    _check_range("still_quality", h.still_quality, 0, 0 if h.mode == "t2v" or h.still_lossless else 100)
    _check_range("residual", h.residual, 0, 1)
    _check_range("precision", h.precision, 0, 1)
    _check_range("text_len", h.text_len, 1, MAX_TEXT_LEN)
    _check_range("dit_period", h.dit_period, 1, MAX_DIT_PERIOD)
    if h.residual_bits not in RESIDUAL_BITS:
        raise BitstreamError(f"header: residual_bits = {h.residual_bits!r} is not one of 4, 8, 16")
    n_gops = num_gops(h)
    _check_range("first_gop", h.first_gop, 0, n_gops - 1 if h.mode != "i2v" else 0)
    if h.gop_count is not None:
        _check_range("gop_count", h.gop_count, 1, n_gops - h.first_gop)
    _check_range("clip_crc", h.clip_crc, 0, 0xFFFFFFFF)


# ==================================================================================================
# GOP layout (spec sections 5.2 and 7)
# ==================================================================================================

def num_gops(header):
    """NumGops: how many GOPs the header's frame count needs (spec section 7)."""
    G = header.gop_frames
    if header.mode == "t2v":
        return -(-header.frames // G)
    return max(1, -(-(header.frames - 1) // (G - 1)))


def gop_info(header, g):
    """GopInfo of GOP g, 0 <= g < num_gops(header) (spec section 7, normative)."""
    G = header.gop_frames
    first = g * (G if header.mode == "t2v" else G - 1)
    n_frames = min(G, header.frames - first)
    n_padded = 4 * (-(-(n_frames - 1) // 4)) + 1
    if header.mode == "t2v":
        n_stills = 0
    elif header.mode == "i2v":
        n_stills = 1 if g == 0 else 0
    else:                                                        # flf2v: first and last, then last only
        n_stills = 2 if g == 0 else 1
    return GopInfo(first, n_frames, n_padded, (n_padded - 1) // 4 + 1, n_stills)


def gop_layout(header):
    """The GOPs of a clip, in order: a list of GopInfo (spec section 7, normative)."""
    return [gop_info(header, g) for g in range(num_gops(header))]


def gop_range(header):
    """The indices of the GOPs a stream with this header holds: first_gop .. first_gop + gop_count - 1."""
    count = header.gop_count if header.gop_count is not None else num_gops(header) - header.first_gop
    return range(header.first_gop, header.first_gop + count)


def has_lead(header):
    """A flf2v part that starts after GOP 0 carries the previous GOP's last still (spec section 3)."""
    return header.mode == "flf2v" and header.first_gop > 0


def output_frames(header, g):
    """OutputFrames( g ): the range of source frames the decoder outputs from GOP g (spec section 7)."""
    info = gop_info(header, g)
    skip = 1 if g > 0 and header.mode != "t2v" else 0
    return range(info.first_frame + skip, info.first_frame + info.n_frames)


def atoms_for_frame(header, f, latent_frames):
    """AtomsForFrame: M_tail in the last tail_frames latent frames of a GOP, M elsewhere."""
    return header.M_tail if f >= latent_frames - header.tail_frames else header.M


@lru_cache(maxsize=64)
def _num_subsets(K, m):
    return math.comb(K, m)


def rank_bits(K, m):
    """RankBits(m) = ceil(log2 C(K, m)): the width of index_rank."""
    return (_num_subsets(K, m) - 1).bit_length()


def sde_steps(header):
    """SdeSteps: the sampler steps that carry codebook symbols; the last step never does (spec section 5.2)."""
    return min(header.steps - header.tail_steps, header.steps - 1)


def codebook_bits(header, latent_frames):
    """(rank bits, sign bits) of one GOP with `latent_frames` latent frames."""
    sde_steps_ = sde_steps(header)
    ranks = signs = 0
    for f in range(latent_frames):
        m = atoms_for_frame(header, f, latent_frames)
        ranks += sde_steps_ * rank_bits(header.K, m)
        signs += sde_steps_ * m
    return ranks, signs


# ==================================================================================================
# Index sets: lexicographic rank (spec section 5.4)
# ==================================================================================================
# combination_rank walks v = 0, 1, ... keeping b = C(n, k): n = K-1-v values lie above v, k elements are still
# to be placed after the current position. b counts the subsets that put v at the current position.
# combination_unrank works on the mirrored values e = K-1-v, where the rank is one binomial per position.

def combination_rank(indices, K):
    """Lexicographic rank of a sorted set of distinct integers in 0..K-1 among all subsets of its size."""
    M = len(indices)
    if M == 0:
        return 0
    prev = -1
    for c in indices:
        if not isinstance(c, int) or not prev < c < K:
            raise BitstreamError(f"index set is not strictly ascending within 0..{K - 1} (at {c!r})")
        prev = c
    rank, v, n, k = 0, 0, K - 1, M - 1
    b = math.comb(n, k)
    for c in indices:
        while v < c:                     # skip v: all subsets with v here come first
            rank += b
            b = b * (n - k) // n         # C(n-1, k)
            n, v = n - 1, v + 1
        if k:                            # take v = c, move to the next position
            b = b * k // n               # C(n-1, k-1)
        n, k, v = n - 1, k - 1, v + 1
    return rank


def combination_unrank(rank, K, M):
    """The sorted M-subset of 0..K-1 whose lexicographic rank is `rank` (inverse of combination_rank).

    Mirrored (e = K-1-c), the rank is a sum of binomials, the combinatorial number system (spec section 5.4):
        C(K, M) - 1 - rank = sum_{i=0}^{M-1} C(e_i, M - i),   e_i = K - 1 - c_i,   e_0 > e_1 > ... > e_{M-1} >= 0
    so each position, in order, takes the largest e below the previous one with C(e, j) <= what is left of the
    sum (j = M - i values still to place, this one included). _largest_at_most finds it by a short walk down, or
    by one binomial where the walk would be long. Every position costs at most about two math.comb(e, j) of
    work, whatever the rank: a forged rank costs at most about twice what an ordinary one does.
    """
    if not 0 <= M <= K:
        raise BitstreamError(f"cannot choose {M} of {K} atoms")
    if not 0 <= rank < _num_subsets(K, M):
        raise BitstreamError(f"rank {rank} is not below C({K}, {M})")
    if M == 0:
        return []
    left = _num_subsets(K, M) - 1 - rank        # the sum of C(e_i, M - i) still to place
    indices = []
    e, b = K - 1, math.comb(K - 1, M)          # the first candidate and C(e, j)
    for j in range(M, 0, -1):
        e, b = _largest_at_most(left, e, j, b)
        left -= b
        indices.append(K - 1 - e)
        if j > 1:
            e, b = e - 1, b * j // e            # C(e-1, j-1) = C(e, j) j / e: the next position's first candidate
    return indices


def _largest_at_most(left, e, j, b):
    """(x, C(x, j)) for the largest x <= e with C(x, j) <= left, given b = C(e, j).

    Walking down costs one small multiply and divide per value, C(x-1, j) = C(x, j) (x - j) / x; one
    math.comb(x, j) costs about j / 8 + 8 such steps, and a float estimate of x (_estimate) about 16 to 50. So:
    up to 16 steps first (most gaps are short), then the estimate; the walk goes on when x is at most j / 8 + 8
    values away, else one exact binomial at the estimate and a one-step check each way settle it (_settle).
    The floats only choose where to look, never the result.
    """
    for _ in range(16):
        if b <= left:
            return e, b
        b = b * (e - j) // e
        e -= 1
    if b <= left:
        return e, b
    x = _estimate(left, e, j)
    if e - x > j // 8 + 8:
        return _settle(left, x, e, j)
    while b > left:
        b = b * (e - j) // e
        e -= 1
    return e, b


def _estimate(left, hi, j):
    """A float estimate of the largest x < hi with C(x, j) <= left (log-gamma bisection), in j-1 .. hi-1."""
    if left == 0:
        return j - 1
    target, lo = math.log(left), j - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if math.lgamma(mid + 1) - math.lgamma(mid - j + 1) - math.lgamma(j + 1) <= target:
            lo = mid
        else:
            hi = mid
    return lo


def _settle(left, x, hi, j):
    """(x, C(x, j)) exactly for the largest x < hi with C(x, j) <= left, starting from the estimate x.

    One binomial, then a step or two with small updates: the estimate is right or one off (one off where left
    is itself a binomial, as at the last position, where log-gamma's rounding decides the tie). Should it be
    further off (log-gamma is accurate to far below the 1 / K that separates neighbouring values), an exact
    bisection between j-1 and hi finishes in O(log K) binomials.
    """
    lo = j - 1                                  # C(lo, j) = 0 <= left < C(hi, j) from here on
    b = math.comb(x, j)
    for _ in range(4):
        if b > left:
            hi, x, b = x, x - 1, b * (x - j) // x                           # C(x-1, j)
            continue
        up = 1 if x + 1 == j else b * (x + 1) // (x + 1 - j)                # C(x+1, j)
        if x + 1 == hi or up > left:
            return x, b
        lo, x, b = x + 1, x + 1, up
    while lo + 1 < hi:                          # exact bisection
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if math.comb(mid, j) <= left else (lo, mid)
    return lo, math.comb(lo, j)


# ==================================================================================================
# Tail residual blob (spec section 6)
# ==================================================================================================

def value_bytes(bits):
    """ValueBytes: bytes per stored residual value (spec section 6)."""
    return 2 if bits == 16 else 1


def _residual_sizes(n_channels, n_values, bits):
    if not isinstance(n_channels, int) or not 1 <= n_channels <= MAX_RESIDUAL_CHANNELS:
        raise BitstreamError(f"residual: {n_channels!r} channels is outside 1..{MAX_RESIDUAL_CHANNELS}")
    if not isinstance(n_values, int) or not 0 <= n_values <= MAX_RESIDUAL_VALUES:
        raise BitstreamError(f"residual: {n_values!r} values is outside 0..{MAX_RESIDUAL_VALUES}")
    if bits not in RESIDUAL_BITS:
        raise BitstreamError(f"residual: {bits!r} bits per value is not one of 4, 8, 16")
    return n_values * value_bytes(bits)


def pack_residual(scales, q, bits):
    """float32 LE scales || zlib(q, level 9): the residual blob of one GOP (spec section 6).

    q: the stored values as bytes (one byte per value for 4 and 8 bits, two little-endian bytes for 16).
    """
    q = bytes(q)
    n_channels = len(scales)
    if len(q) % value_bytes(bits):
        raise BitstreamError(f"residual: {len(q)} bytes are not whole {bits}-bit values")
    _residual_sizes(n_channels, len(q) // value_bytes(bits), bits)
    for c, s in enumerate(scales):
        if not isinstance(s, (int, float)) or not math.isfinite(s) or s < 0:
            raise BitstreamError(f"residual: scale {c} = {s!r} is not a finite non-negative number")
    if bits == 4 and any(v > 15 for v in q):
        raise BitstreamError("residual: a 4-bit value is above 15")
    try:
        head = struct.pack(f"<{n_channels}f", *scales)
    except (OverflowError, struct.error):
        raise BitstreamError("residual: a scale does not fit in a float32") from None
    blob = head + zlib.compress(q, 9)
    if len(blob) > MAX_RESIDUAL_SIZE:
        raise BitstreamError(f"residual: blob is {len(blob)} bytes, the limit is {MAX_RESIDUAL_SIZE}")
    return blob


def unpack_residual(blob, n_channels, n_values, bits):
    """(scales: list[float], q: the stored value bytes) from a residual blob; never inflates past that size."""
    expected = _residual_sizes(n_channels, n_values, bits)
    if not 4 * n_channels < len(blob) <= MAX_RESIDUAL_SIZE:
        raise BitstreamError(f"residual: blob is {len(blob)} bytes, outside {4 * n_channels + 1}..{MAX_RESIDUAL_SIZE}")
    scales = list(struct.unpack(f"<{n_channels}f", bytes(blob[:4 * n_channels])))
    for c, s in enumerate(scales):
        if not math.isfinite(s) or s < 0:
            raise BitstreamError(f"residual: scale {c} = {s!r} is not a finite non-negative float32")
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(bytes(blob[4 * n_channels:]), expected + 1)     # bounded: a zlib bomb stops here
    except zlib.error as exc:
        raise BitstreamError(f"residual: not a valid zlib stream ({exc})") from None
    if len(raw) != expected or not inflater.eof or inflater.unused_data:
        raise BitstreamError(f"residual: blob does not hold exactly {n_values} {bits}-bit values in one zlib stream")
    if bits == 4 and max(raw, default=0) > 15:
        raise BitstreamError("residual: a 4-bit value is above 15")
    return scales, raw


# ==================================================================================================
# Bit writer (spec sections 2 and 5.3)
# ==================================================================================================

class _BitWriter:
    """Appends u(n) fields MSB first; whole bytes are flushed as soon as they are complete."""

    def __init__(self):
        self.out = bytearray()
        self.acc = 0                     # pending bits, the oldest in the most significant place
        self.n_acc = 0

    def put(self, value, n):
        self.acc = (self.acc << n) | value
        self.n_acc += n
        n_bytes = self.n_acc >> 3
        if n_bytes:
            self.n_acc -= 8 * n_bytes
            self.out += (self.acc >> self.n_acc).to_bytes(n_bytes, "big")
            self.acc &= (1 << self.n_acc) - 1

    def finish(self):
        if self.n_acc:
            self.put(0, 8 - self.n_acc)  # zero_bit padding to the byte boundary
        return bytes(self.out)


# ==================================================================================================
# Writing (spec sections 4 and 5; encoder obligations in section 10)
# ==================================================================================================

def _u(value, n_bytes):
    return value.to_bytes(n_bytes, "big")


def write_header(header):
    """The header bytes, header_crc included."""
    check_header(header)
    model = header.model.encode("ascii")
    prompt = header.prompt.encode("utf-8")
    values = {name: getattr(header, name, None) for name, _ in HEADER_FIELDS}
    values.update(version=VERSION, mode=MODES.index(header.mode),
                  flags=header.residual << 7 | header.precision << 6 | header.still_lossless << 5,
                  model_len=len(model), prompt_len=len(prompt), gop_count=len(gop_range(header)))
    out = MAGIC + b"".join(_u(values[name], size) for name, size in HEADER_FIELDS) + model + prompt
    return out + _u(zlib.crc32(out), 4)


def _check_symbols(header, g, symbols, latent_frames):
    expected = sde_steps(header)
    if len(symbols) != expected:
        raise BitstreamError(f"GOP {g}: {len(symbols)} SDE steps of symbols, expected {expected}")
    for j, step in enumerate(symbols):
        if len(step) != latent_frames:
            raise BitstreamError(f"GOP {g} step {j}: {len(step)} latent frames of symbols, expected {latent_frames}")
        for f, (indices, signs) in enumerate(step):
            m = atoms_for_frame(header, f, latent_frames)
            if len(indices) != m or len(signs) != m:
                raise BitstreamError(f"GOP {g} step {j} frame {f}: {len(indices)} indices and {len(signs)} signs,"
                                     f" expected {m} of each")
            if any(s not in (0, 1) for s in signs):
                raise BitstreamError(f"GOP {g} step {j} frame {f}: signs must be 0 (+) or 1 (-)")
            prev = -1
            for c in indices:
                if not isinstance(c, int) or not prev < c < header.K:
                    raise BitstreamError(f"GOP {g} step {j} frame {f}: indices are not strictly ascending"
                                         f" within 0..{header.K - 1}")
                prev = c


def clip_key(header_bytes):
    """ClipKey (spec section 11): CRC-32 of the header bytes before header_crc, first_gop and gop_count as zero."""
    b = bytearray(header_bytes[:-4])
    b[PART_FIELDS] = bytes(PART_FIELDS.stop - PART_FIELDS.start)
    return zlib.crc32(b)


def write_lead(still):
    """The lead of a flf2v part (spec section 3): lead_size, the still, lead_crc."""
    if not 1 <= len(still) <= MAX_STILL_SIZE:
        raise BitstreamError(f"lead still of {len(still)} bytes is outside 1..{MAX_STILL_SIZE}")
    body = _u(len(still), 4) + bytes(still)
    return body + _u(zlib.crc32(body), 4)


def write_stream(header, gops, lead=None):
    """Serialise a header and its GOPs (one Gop per index in gop_range(header)) to bytes.

    lead: the lead still's bytes, which a flf2v part with first_gop > 0 must have (has_lead) and no other stream.
    """
    out = [write_header(header)]
    if has_lead(header) != (lead is not None):
        raise BitstreamError(f"a lead still is needed exactly in a flf2v part after GOP 0 (first_gop "
                             f"{header.first_gop}, mode {header.mode})")
    if lead is not None:
        out.append(write_lead(lead))
    indices = gop_range(header)
    if len(gops) != len(indices):
        raise BitstreamError(f"{len(gops)} GOPs given, the header's frame count and GOP range need {len(indices)}")
    return b"".join(out + [write_gop(header, g, gop) for g, gop in zip(indices, gops)])


def write_gop(header, g, gop):
    """The bytes of GOP g (spec section 5), gop_crc included."""
    info = gop_info(header, g)
    body = bytearray()
    if len(gop.stills) != info.n_stills:
        raise BitstreamError(f"GOP {g}: {len(gop.stills)} stills given, mode {header.mode} needs {info.n_stills}")
    for still in gop.stills:
        if not 1 <= len(still) <= MAX_STILL_SIZE:
            raise BitstreamError(f"GOP {g}: still of {len(still)} bytes is outside 1..{MAX_STILL_SIZE}")
        body += _u(len(still), 4) + bytes(still)
    if header.residual:
        if not 1 <= len(gop.residual) <= MAX_RESIDUAL_SIZE:
            raise BitstreamError(f"GOP {g}: residual of {len(gop.residual)} bytes is outside 1..{MAX_RESIDUAL_SIZE}")
        body += _u(len(gop.residual), 4) + bytes(gop.residual)
    elif gop.residual:
        raise BitstreamError(f"GOP {g}: carries a residual but the header's residual flag is 0")
    _check_symbols(header, g, gop.symbols, info.latent_frames)
    bits = _BitWriter()
    for step in gop.symbols:
        for f, (indices, signs) in enumerate(step):
            m = len(indices)
            bits.put(combination_rank(list(indices), header.K), rank_bits(header.K, m))
            bits.put(int("".join("01"[s] for s in signs), 2), m)
    body += bits.finish()
    if len(body) > MAX_GOP_SIZE:
        raise BitstreamError(f"GOP {g}: {len(body)} bytes, the limit is {MAX_GOP_SIZE}")
    gop_bytes = _u(len(body), 4) + bytes(body)
    return gop_bytes + _u(zlib.crc32(gop_bytes), 4)


# ==================================================================================================
# Reading (spec sections 4, 5 and 9)
# ==================================================================================================
# open_stream checks the whole framing of a stream (header, every GOP's sizes and CRC, padding, trailing bytes)
# in one pass that is linear in the stream's length and allocates 8 bytes per GOP for an index of GOP offsets.
# A GOP's contents are read only when asked for: Stream[g] gives a GopRecord whose stills and residual are
# views into the stream, and whose symbols are unpacked one (step, frame) at a time. So memory stays bounded by
# what one symbol needs, whatever the stream, and any GOP can be reached without reading the others.

def _need(data, pos, n, what):
    if len(data) - pos < n:
        raise BitstreamError(f"truncated stream: {what} needs {n} bytes at offset {pos}, {len(data) - pos} remain")


def _inside(pos, n, end, g, what):
    if end - pos < n:
        raise BitstreamError(f"GOP {g}: {what} ({n} bytes at offset {pos}) runs past the end given by gop_size")


def _get(data, pos, n):
    return int.from_bytes(data[pos:pos + n], "big")


def _get_bits(data, pos, n):
    """u(n) at bit position pos of a byte string (MSB first, section 2)."""
    if n == 0:
        return 0
    end = pos + n
    first, last = pos >> 3, (end + 7) >> 3
    return (int.from_bytes(data[first:last], "big") >> ((last << 3) - end)) & ((1 << n) - 1)


def _view(data):
    try:
        view = memoryview(data)
    except TypeError:
        raise BitstreamError(f"expected bytes, got {type(data).__name__}") from None
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


def _read_header(data):
    """(header, header length in bytes)."""
    data = _view(data)
    _need(data, 0, 4, "magic")
    if bytes(data[:4]) != MAGIC:
        raise BitstreamError(f"not a gvcc stream: bad magic {bytes(data[:4])!r} (expected {MAGIC!r})")
    _need(data, 4, 1, "version")
    if data[4] != VERSION:
        old = " (a stream from an older gvcc: re-encode its source)" if data[4] < VERSION else ""
        raise BitstreamError(f"unsupported gvcc format version {data[4]}{old}; this decoder reads version {VERSION}")
    _need(data, 0, FIXED_HEADER_BYTES, "fixed header")
    raw, pos = {}, 4
    for name, size in HEADER_FIELDS:
        raw[name] = _get(data, pos, size)
        pos += size
    if raw["model_len"] > MAX_MODEL_LEN:
        raise BitstreamError(f"header: model_len = {raw['model_len']} exceeds the limit {MAX_MODEL_LEN}")
    if raw["prompt_len"] > MAX_PROMPT_LEN:
        raise BitstreamError(f"header: prompt_len = {raw['prompt_len']} exceeds the limit {MAX_PROMPT_LEN}")
    length = FIXED_HEADER_BYTES + raw["model_len"] + raw["prompt_len"]
    _need(data, 0, length + 4, "header (model, prompt and header_crc)")
    stored, computed = _get(data, length, 4), zlib.crc32(data[:length])
    if stored != computed:
        raise BitstreamError(f"header CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")
    if raw["mode"] >= len(MODES):
        raise BitstreamError(f"header: unknown mode {raw['mode']}")
    if raw["flags"] & 0x1F:
        raise BitstreamError(f"header: reserved bits are not zero (flags byte {raw['flags']:#04x})")
    model = bytes(data[FIXED_HEADER_BYTES:FIXED_HEADER_BYTES + raw["model_len"]])
    if any(not 0x21 <= ch <= 0x7E for ch in model) or not model:
        raise BitstreamError(f"header: model name {model!r} is not 1..{MAX_MODEL_LEN} printable ASCII characters")
    try:
        prompt = bytes(data[FIXED_HEADER_BYTES + raw["model_len"]:length]).decode("utf-8")
    except UnicodeDecodeError:
        raise BitstreamError("header: prompt is not valid UTF-8") from None
    fields = {name: raw[name] for name in Header.__dataclass_fields__ if name in raw and name != "mode"}
    header = Header(mode=MODES[raw["mode"]], model=model.decode("ascii"), prompt=prompt,
                    residual=raw["flags"] >> 7, precision=(raw["flags"] >> 6) & 1,
                    still_lossless=(raw["flags"] >> 5) & 1, **fields)
    check_header(header)
    if header.first_gop + header.gop_count == num_gops(header):
        header = dataclasses.replace(header, gop_count=None)     # canonical: through the last GOP
    return header, length + 4


def read_header(data):
    """The Header of a stream; `data` needs to hold only the header's bytes."""
    return _read_header(data)[0]


def _read_lead(data, header, pos):
    """(lead still bytes or None, position after the lead) (spec section 3)."""
    if not has_lead(header):
        return None, pos
    _need(data, pos, 4, "lead_size")
    size = _get(data, pos, 4)
    if not 1 <= size <= MAX_STILL_SIZE:
        raise BitstreamError(f"lead: lead_size = {size} is outside 1..{MAX_STILL_SIZE}")
    _need(data, pos, size + 8, "lead")
    stored, computed = _get(data, pos + 4 + size, 4), zlib.crc32(data[pos:pos + 4 + size])
    if stored != computed:
        raise BitstreamError(f"lead: CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")
    return bytes(data[pos + 4:pos + 4 + size]), pos + size + 8


class GopRecord:
    """One GOP of a stream, framing checked (sizes, gop_crc, padding bits); its symbols are read on demand.

    stills and residual are memoryviews into the stream's bytes (bytes(...) copies one out). symbol(j, f)
    unpacks and unranks the symbol of SDE step j, latent frame f; check_ranks() range-checks every index_rank
    without unranking. Sizes for rate reports are in row().
    """

    def __init__(self, header, index, info, offset, stills, residual, codebook, n_rank_bits, n_sign_bits):
        self.header = header
        self.index = index                   # g
        self.info = info                     # GopInfo (section 7)
        self.offset = offset                 # byte offset of gop_size in the stream
        self.stills = stills                 # memoryview of each AVIF still, display order
        self.residual = residual             # memoryview of the residual blob (empty when header.residual = 0)
        self.codebook = codebook             # memoryview of the codebook section, padding included
        self.n_rank_bits, self.n_sign_bits = n_rank_bits, n_sign_bits
        L = info.latent_frames
        self._m = [atoms_for_frame(header, f, L) for f in range(L)]
        self._bits = [rank_bits(header.K, m) for m in self._m]
        self._start = [0]                    # bit offset of latent frame f's symbol within one SDE step
        for m, nb in zip(self._m, self._bits):
            self._start.append(self._start[-1] + nb + m)

    @property
    def total_bytes(self):
        return GOP_FRAMING_BYTES + sum(4 + len(s) for s in self.stills) + \
            (4 + len(self.residual) if self.header.residual else 0) + len(self.codebook)

    def _fields(self, j, f):
        """(index_rank, sign bits as one integer, m) of SDE step j, latent frame f."""
        if not 0 <= j < sde_steps(self.header) or not 0 <= f < self.info.latent_frames:
            raise IndexError(f"GOP {self.index} has no symbol at step {j}, frame {f}")
        pos = j * self._start[-1] + self._start[f]
        m, nb = self._m[f], self._bits[f]
        return _get_bits(self.codebook, pos, nb), _get_bits(self.codebook, pos + nb, m), m

    def _rank_error(self, j, f, m):
        return BitstreamError(f"GOP {self.index} step {j} frame {f}: index_rank is not below C({self.header.K}, {m})")

    def symbol(self, j, f):
        """(indices sorted ascending, signs 0 = + / 1 = -) of SDE step j, latent frame f."""
        rank, sign_bits, m = self._fields(j, f)
        if rank >= _num_subsets(self.header.K, m):
            raise self._rank_error(j, f, m)
        return combination_unrank(rank, self.header.K, m), [int(ch) for ch in format(sign_bits, f"0{m}b")]

    def symbols(self):
        """Every symbol of the GOP as lists [step j][latent frame f] (for small streams: tests and tools)."""
        return [[self.symbol(j, f) for f in range(self.info.latent_frames)]
                for j in range(sde_steps(self.header))]

    def check_ranks(self):
        """Raise BitstreamError if an index_rank is >= C(K, m) (section 9); nothing is unranked."""
        checks = [(f, self._start[f], nb, _num_subsets(self.header.K, m))
                  for f, (m, nb) in enumerate(zip(self._m, self._bits))
                  if _num_subsets(self.header.K, m) != 1 << nb]          # else every nb-bit value is a rank
        if not checks:
            return
        step_bits = self._start[-1]
        for j in range(sde_steps(self.header)):
            if step_bits <= 4096:            # short steps: one integer per step, each rank shifted out of it
                first, last = (j * step_bits) >> 3, ((j + 1) * step_bits + 7) >> 3
                word, end = int.from_bytes(self.codebook[first:last], "big"), 8 * last - j * step_bits
                ranks = ((word >> (end - start - nb)) & ((1 << nb) - 1) for f, start, nb, _ in checks)
            else:
                ranks = (_get_bits(self.codebook, j * step_bits + start, nb) for f, start, nb, _ in checks)
            for rank, (f, _, _, limit) in zip(ranks, checks):
                if rank >= limit:
                    raise self._rank_error(j, f, self._m[f])

    def row(self):
        """Where this GOP's bytes go (see stream_report)."""
        n_bits = self.n_rank_bits + self.n_sign_bits
        info = self.info
        return dict(index=self.index, total_bytes=self.total_bytes, codebook_bytes=len(self.codebook),
                    still_bytes=sum(len(s) for s in self.stills), residual_bytes=len(self.residual),
                    overhead_bytes=GOP_FRAMING_BYTES + 4 * info.n_stills + 4 * self.header.residual,
                    codebook_bits=n_bits, rank_bits=self.n_rank_bits, sign_bits=self.n_sign_bits,
                    padding_bits=8 * len(self.codebook) - n_bits, first_frame=info.first_frame,
                    n_frames=info.n_frames, latent_frames=info.latent_frames, n_stills=info.n_stills)


def _read_gop(data, pos, header, g):
    """The GopRecord of GOP g at byte offset pos, after every check of its framing (section 9)."""
    info = gop_info(header, g)
    start = pos
    _need(data, pos, 4, f"GOP {g} gop_size")
    gop_size = _get(data, pos, 4)
    if gop_size > MAX_GOP_SIZE:
        raise BitstreamError(f"GOP {g}: gop_size = {gop_size} exceeds the limit {MAX_GOP_SIZE}")
    _need(data, pos, gop_size + GOP_FRAMING_BYTES, f"GOP {g}")
    end = pos + 4 + gop_size
    stored, computed = _get(data, end, 4), zlib.crc32(data[start:end])
    if stored != computed:
        raise BitstreamError(f"GOP {g}: CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")
    pos += 4
    stills = []
    for i in range(info.n_stills):
        _inside(pos, 4, end, g, f"still {i} still_size")
        size = _get(data, pos, 4)
        if not 1 <= size <= MAX_STILL_SIZE:
            raise BitstreamError(f"GOP {g}: still_size = {size} is outside 1..{MAX_STILL_SIZE}")
        _inside(pos + 4, size, end, g, f"still {i}")
        stills.append(data[pos + 4:pos + 4 + size])
        pos += 4 + size
    residual = data[0:0]
    if header.residual:
        _inside(pos, 4, end, g, "residual_size")
        size = _get(data, pos, 4)
        if not 1 <= size <= MAX_RESIDUAL_SIZE:
            raise BitstreamError(f"GOP {g}: residual_size = {size} is outside 1..{MAX_RESIDUAL_SIZE}")
        _inside(pos + 4, size, end, g, "residual_data")
        residual = data[pos + 4:pos + 4 + size]
        pos += 4 + size
    n_rank, n_sign = codebook_bits(header, info.latent_frames)
    n_bytes = (n_rank + n_sign + 7) // 8
    if end - pos != n_bytes:
        raise BitstreamError(f"GOP {g}: gop_size = {gop_size} does not match its contents "
                             f"({end - pos} bytes left for a codebook of {n_bytes} bytes)")
    padding = 8 * n_bytes - n_rank - n_sign
    if padding and data[end - 1] & ((1 << padding) - 1):
        raise BitstreamError(f"GOP {g}: padding bits after the codebook are not zero")
    return GopRecord(header, g, info, start, stills, residual, data[pos:end], n_rank, n_sign)


class Stream:
    """A stream whose header and GOP framing open_stream has checked: stream[g] is GOP g's GopRecord.

    g is the GOP's index in the clip: first_gop .. first_gop + gop_count - 1 (`indices`; 0 .. NumGops - 1 in a
    complete stream). Reading a record re-reads only that GOP's framing (and its CRC), so GOPs can be visited in
    any order and in any number, e.g. a range of them for random access (section 9.1).
    """

    def __init__(self, data, header, header_bytes, offsets, lead=None):
        self.data = data                     # memoryview of the whole stream
        self.header = header
        self.header_bytes = header_bytes     # header length, header_crc included
        self._offsets = offsets              # array of each GOP's byte offset
        self.indices = gop_range(header)     # the GOPs the stream holds
        self.lead = lead                     # a flf2v part's lead still (section 3), else None

    def __len__(self):
        return len(self._offsets)

    def __getitem__(self, g):
        if not isinstance(g, int):
            raise TypeError("a Stream is indexed by GOP number")
        if g < 0:
            g += self.indices.stop
        if g not in self.indices:
            raise IndexError(f"GOP {g} is outside {self.indices.start}..{self.indices.stop - 1}")
        return _read_gop(self.data, self._offsets[g - self.indices.start], self.header, g)

    def __iter__(self):
        return (self[g] for g in self.indices)

    def check_ranks(self):
        """Range-check every index_rank of every GOP (section 9), unranking nothing."""
        for gop in self:
            gop.check_ranks()

    def lead_for(self, g):
        """flf2v: the still that conditions GOP g's first frame when g is not GOP 0: the last still of GOP g-1,
        or the lead when GOP g-1 is not in the stream (section 9.1). None otherwise."""
        if self.header.mode != "flf2v" or g == 0:
            return None
        return self.lead if g == self.indices.start else bytes(self[g - 1].stills[-1])

    def gop_bytes(self):
        """The bytes of all the stream's GOPs (what concat copies)."""
        return bytes(self.data[self._offsets[0]:]) if len(self) else b""


def open_stream(data):
    """Check a whole stream's framing (every section 9 check but the ranks, stills and residuals, which are
    checked when read) and return a Stream. Time is linear in len(data); memory is 8 bytes per GOP."""
    header, pos = _read_header(data)
    header_bytes = pos
    data = _view(data)
    lead, pos = _read_lead(data, header, pos)
    indices = gop_range(header)
    # Each GOP is at least 8 bytes: reject a forged GOP count before building the index.
    _need(data, pos, GOP_FRAMING_BYTES * len(indices), f"the header's {len(indices)} GOP(s)")
    offsets = array("Q")
    for g in indices:
        gop = _read_gop(data, pos, header, g)
        offsets.append(pos)
        pos += gop.total_bytes
    if pos != len(data):
        raise BitstreamError(f"{len(data) - pos} unexpected bytes after the last GOP (offset {pos})")
    return Stream(data, header, header_bytes, offsets, lead)


def _unpacked(gop):
    return Gop(gop.symbols(), [bytes(s) for s in gop.stills], bytes(gop.residual))


def read_stream(data):
    """(header, list of Gop) with every symbol unpacked: for small streams (tests, tools). A decoder uses
    open_stream, whose memory does not grow with the symbols."""
    stream = open_stream(data)
    return stream.header, [_unpacked(gop) for gop in stream]


def read_part(data):
    """(header, lead still or None, list of Gop): read_stream that also returns a part's lead (spec section 3)."""
    stream = open_stream(data)
    return stream.header, stream.lead, [_unpacked(gop) for gop in stream]


def read_gops(data, start, stop):
    """Random access (spec section 9.1): (header, lead, [Gop of g for g in start..stop-1]); lead is what
    Stream.lead_for(start) gives."""
    stream = open_stream(data)
    if not stream.indices.start <= start < stop <= stream.indices.stop:
        raise BitstreamError(f"GOPs {start}:{stop} are not within the stream's GOPs "
                             f"{stream.indices.start}:{stream.indices.stop}")
    return stream.header, stream.lead_for(start), [_unpacked(stream[g]) for g in range(start, stop)]


def concat(parts):
    """Join part streams (bytes, in order) into one complete stream (spec section 11); BitstreamError if they
    do not form one clip."""
    if not parts:
        raise BitstreamError("concat needs at least one part")
    first = None
    pieces, expect = [], 0
    for i, data in enumerate(parts):
        try:
            stream = open_stream(data)
            stream.check_ranks()
        except BitstreamError as exc:
            raise BitstreamError(f"part {i + 1}: {exc}") from None
        header = stream.header
        key = clip_key(bytes(stream.data[:stream.header_bytes]))
        if first is None:
            first = (header, key)
        elif key != first[1]:
            diff = [f for f in Header.__dataclass_fields__ if f not in ("first_gop", "gop_count")
                    and getattr(header, f) != getattr(first[0], f)]
            raise BitstreamError(f"part {i + 1} is not from the same clip and settings as part 1 "
                                 f"(differs in {', '.join(diff) or 'its header bytes'})")
        if stream.indices.start != expect:
            raise BitstreamError(f"part {i + 1} holds GOPs {stream.indices.start}:{stream.indices.stop}, expected "
                                 f"it to start at GOP {expect}")
        expect = stream.indices.stop
        pieces.append(stream.gop_bytes())
    n_gops = num_gops(first[0])
    if expect != n_gops:
        raise BitstreamError(f"the parts end at GOP {expect}, the clip has {n_gops} GOPs")
    whole = dataclasses.replace(first[0], first_gop=0, gop_count=None)
    return write_header(whole) + b"".join(pieces)


# ==================================================================================================
# Rate report (for `gvcc.py info`)
# ==================================================================================================

def stream_report(data):
    """Where the bytes of a stream go, after checking it completely (ranks are checked, not unranked).

    Returns a dict: file_bytes, header_bytes, prompt_bytes (part of header_bytes) and gops, a list with one dict
    per GOP (GopRecord.row): index; total_bytes (the whole GOP) = codebook_bytes + still_bytes + residual_bytes +
    overhead_bytes (the framing: gop_size, gop_crc and the still and residual size fields); codebook_bits =
    rank_bits + sign_bits (codebook_bytes holds them plus padding_bits zero bits); first_frame, n_frames,
    latent_frames, n_stills; lead_bytes: the lead of a flf2v part (0 elsewhere). header_bytes + lead_bytes plus
    the sum of the GOPs' total_bytes is file_bytes.
    """
    stream = open_stream(data)
    rows = []
    for gop in stream:
        gop.check_ranks()
        rows.append(gop.row())
    return dict(file_bytes=len(stream.data), header_bytes=stream.header_bytes,
                lead_bytes=len(stream.lead) + 8 if stream.lead is not None else 0,
                prompt_bytes=len(stream.header.prompt.encode("utf-8")), gops=rows)
