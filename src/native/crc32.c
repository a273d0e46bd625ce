/*
 * crc32: zlib's CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320) as fast as the CPU allows,
 * for the store's checksums (src/store/checksum.ts). The same values as zlib's crc32, with the
 * same continuation: crc32(b, crc32(a)) == crc32(a ++ b), seed 0 to start.
 *
 *   crc32(bytes, seed = 0)          -> u32: bytes is any TypedArray or DataView (Buffer included),
 *                                     read from its byte offset for its byte length
 *   (read-crc.c adds readCrcBatch, registered from here)
 *   crc32Blocks(bytes, block, out)  -> u32: the CRC of the whole of `bytes`, and out[k] (a
 *                                     Uint32Array) the CRC of the k-th `block`-sized piece (the
 *                                     last may be shorter): the bytes are read once, the pieces
 *                                     combined as zlib's crc32_combine
 *
 * x86-64: carry-less multiplication folding (Intel, "Fast CRC Computation for Generic Polynomials
 * Using PCLMULQDQ Instruction", 2009), with 128-bit registers (PCLMULQDQ + SSE4.1) or 256-bit
 * ones (VPCLMULQDQ + AVX2), chosen at load time from what the CPU reports; the functions carry
 * their own target attributes, so the addon is built without -m flags and loads on any x86-64.
 * Everywhere else, and for the few bytes the folding leaves, slicing-by-8 tables.
 *
 * The fold constants are x^n mod P (bit-reflected, shifted left by one, as in the paper), computed
 * at load time from the polynomial rather than copied: x^(d+32) and x^(d-32) fold a register d
 * bits forward, x^64 folds 64 bits into 32, and the Barrett step uses P and floor(x^64 / P).
 */
#include <node_api.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "napi-util.h"

#define POLY 0xedb88320u

static uint32_t table[8][256];
/* Moving a CRC past 4 KiB is linear in its bits: four tables of one byte each (made at load). */
static uint32_t shift_table[4][256];

/* a * b modulo P, reflected (zlib's multmodp). */
static uint32_t mult_mod_p(uint32_t a, uint32_t b) {
  uint32_t m = 1u << 31, p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) == 0) break;
    }
    m >>= 1;
    b = b & 1 ? (b >> 1) ^ POLY : b >> 1;
  }
  return p;
}

/* x^n modulo P, reflected. */
static uint32_t x_pow_mod_p(uint64_t n) {
  uint32_t p = 1u << 31, x = 1u << 30;
  while (n) {
    if (n & 1) p = mult_mod_p(x, p);
    x = mult_mod_p(x, x);
    n >>= 1;
  }
  return p;
}

static uint64_t fold_k(unsigned n) { return (uint64_t)x_pow_mod_p(n) << 1; }

/* Slicing-by-8 on the inverted register. */
static uint32_t crc_table(uint32_t c, const uint8_t *p, size_t n) {
  while (n && ((uintptr_t)p & 7)) {
    c = table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    n--;
  }
  while (n >= 8) {
    uint32_t lo, hi;
    memcpy(&lo, p, 4);
    memcpy(&hi, p + 4, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    lo = __builtin_bswap32(lo);
    hi = __builtin_bswap32(hi);
#endif
    lo ^= c;
    c = table[7][lo & 0xff] ^ table[6][(lo >> 8) & 0xff] ^ table[5][(lo >> 16) & 0xff] ^ table[4][lo >> 24] ^
        table[3][hi & 0xff] ^ table[2][(hi >> 8) & 0xff] ^ table[1][(hi >> 16) & 0xff] ^ table[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n--) c = table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
  return c;
}

/* Fold constants, low qword multiplies the low half of a register, high qword the high half. */
static uint64_t k_512[2], k_128[2], k_64, k_poly[2], k_1024[2], k_256[2];

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_CLMUL 1

/*
 * The last 16-byte blocks of p[0..n) (n a multiple of 16) folded into the 128-bit register x,
 * then x reduced: 128 bits to 64, then to 32 by Barrett reduction. The end of both kernels.
 */
__attribute__((target("pclmul,sse4.1"))) static inline uint32_t fold_reduce(__m128i x, const uint8_t *p, size_t n) {
  __m128i k = _mm_loadu_si128((const __m128i *)k_128);
  while (n >= 16) {
    __m128i l = _mm_clmulepi64_si128(x, k, 0x00);
    x = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x11), l), _mm_loadu_si128((const __m128i *)p));
    p += 16;
    n -= 16;
  }
  __m128i mask = _mm_setr_epi32(~0, 0, ~0, 0);
  x = _mm_xor_si128(_mm_srli_si128(x, 8), _mm_clmulepi64_si128(x, k, 0x10));
  k = _mm_set_epi64x(0, (long long)k_64);
  x = _mm_xor_si128(_mm_srli_si128(x, 4), _mm_clmulepi64_si128(_mm_and_si128(x, mask), k, 0x00));
  k = _mm_loadu_si128((const __m128i *)k_poly);
  __m128i t = _mm_clmulepi64_si128(_mm_and_si128(x, mask), k, 0x10);
  t = _mm_clmulepi64_si128(_mm_and_si128(t, mask), k, 0x00);
  return (uint32_t)_mm_extract_epi32(_mm_xor_si128(x, t), 1);
}

/* The inverted register over n bytes, n >= 64 and a multiple of 16. */
__attribute__((target("pclmul,sse4.1"))) static uint32_t crc_clmul(uint32_t c, const uint8_t *p, size_t n) {
  __m128i k = _mm_loadu_si128((const __m128i *)k_512);
  __m128i x1 = _mm_xor_si128(_mm_loadu_si128((const __m128i *)p), _mm_cvtsi32_si128((int)c));
  __m128i x2 = _mm_loadu_si128((const __m128i *)(p + 16));
  __m128i x3 = _mm_loadu_si128((const __m128i *)(p + 32));
  __m128i x4 = _mm_loadu_si128((const __m128i *)(p + 48));
  p += 64;
  n -= 64;
  while (n >= 64) {
    __m128i l1 = _mm_clmulepi64_si128(x1, k, 0x00), l2 = _mm_clmulepi64_si128(x2, k, 0x00);
    __m128i l3 = _mm_clmulepi64_si128(x3, k, 0x00), l4 = _mm_clmulepi64_si128(x4, k, 0x00);
    x1 = _mm_clmulepi64_si128(x1, k, 0x11);
    x2 = _mm_clmulepi64_si128(x2, k, 0x11);
    x3 = _mm_clmulepi64_si128(x3, k, 0x11);
    x4 = _mm_clmulepi64_si128(x4, k, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, l1), _mm_loadu_si128((const __m128i *)p));
    x2 = _mm_xor_si128(_mm_xor_si128(x2, l2), _mm_loadu_si128((const __m128i *)(p + 16)));
    x3 = _mm_xor_si128(_mm_xor_si128(x3, l3), _mm_loadu_si128((const __m128i *)(p + 32)));
    x4 = _mm_xor_si128(_mm_xor_si128(x4, l4), _mm_loadu_si128((const __m128i *)(p + 48)));
    p += 64;
    n -= 64;
  }
  k = _mm_loadu_si128((const __m128i *)k_128);
  __m128i l;
  l = _mm_clmulepi64_si128(x1, k, 0x00);
  x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k, 0x11), l), x2);
  l = _mm_clmulepi64_si128(x1, k, 0x00);
  x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k, 0x11), l), x3);
  l = _mm_clmulepi64_si128(x1, k, 0x00);
  x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k, 0x11), l), x4);
  return fold_reduce(x1, p, n);
}

/* The same with 256-bit registers: n >= 128 and a multiple of 16. */
__attribute__((target("pclmul,sse4.1,avx2,vpclmulqdq"))) static uint32_t crc_vclmul(uint32_t c, const uint8_t *p,
                                                                                     size_t n) {
  __m256i k = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)k_1024));
  __m256i y1 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)p), _mm256_zextsi128_si256(_mm_cvtsi32_si128((int)c)));
  __m256i y2 = _mm256_loadu_si256((const __m256i *)(p + 32));
  __m256i y3 = _mm256_loadu_si256((const __m256i *)(p + 64));
  __m256i y4 = _mm256_loadu_si256((const __m256i *)(p + 96));
  p += 128;
  n -= 128;
  while (n >= 128) {
    __m256i l1 = _mm256_clmulepi64_epi128(y1, k, 0x00), l2 = _mm256_clmulepi64_epi128(y2, k, 0x00);
    __m256i l3 = _mm256_clmulepi64_epi128(y3, k, 0x00), l4 = _mm256_clmulepi64_epi128(y4, k, 0x00);
    y1 = _mm256_clmulepi64_epi128(y1, k, 0x11);
    y2 = _mm256_clmulepi64_epi128(y2, k, 0x11);
    y3 = _mm256_clmulepi64_epi128(y3, k, 0x11);
    y4 = _mm256_clmulepi64_epi128(y4, k, 0x11);
    y1 = _mm256_xor_si256(_mm256_xor_si256(y1, l1), _mm256_loadu_si256((const __m256i *)p));
    y2 = _mm256_xor_si256(_mm256_xor_si256(y2, l2), _mm256_loadu_si256((const __m256i *)(p + 32)));
    y3 = _mm256_xor_si256(_mm256_xor_si256(y3, l3), _mm256_loadu_si256((const __m256i *)(p + 64)));
    y4 = _mm256_xor_si256(_mm256_xor_si256(y4, l4), _mm256_loadu_si256((const __m256i *)(p + 96)));
    p += 128;
    n -= 128;
  }
  k = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)k_256));
  __m256i l;
  l = _mm256_clmulepi64_epi128(y1, k, 0x00);
  y1 = _mm256_xor_si256(_mm256_xor_si256(_mm256_clmulepi64_epi128(y1, k, 0x11), l), y2);
  l = _mm256_clmulepi64_epi128(y1, k, 0x00);
  y1 = _mm256_xor_si256(_mm256_xor_si256(_mm256_clmulepi64_epi128(y1, k, 0x11), l), y3);
  l = _mm256_clmulepi64_epi128(y1, k, 0x00);
  y1 = _mm256_xor_si256(_mm256_xor_si256(_mm256_clmulepi64_epi128(y1, k, 0x11), l), y4);
  /* The low lane folded 128 bits onto the high lane, then the 128-bit tail and reduction. */
  __m128i k1 = _mm_loadu_si128((const __m128i *)k_128);
  __m128i lo = _mm256_castsi256_si128(y1), hi = _mm256_extracti128_si256(y1, 1);
  __m128i x = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(lo, k1, 0x11), _mm_clmulepi64_si128(lo, k1, 0x00)), hi);
  return fold_reduce(x, p, n);
}
#endif

/* 0: tables only, 1: PCLMULQDQ, 2: VPCLMULQDQ. Settable for tests through crc32Use. */
static int level = 0, best = 0;

static uint32_t crc32_update(uint32_t crc, const uint8_t *p, size_t n) {
  uint32_t c = ~crc;
#ifdef HAVE_CLMUL
  if (level == 2 && n >= 256) {
    size_t m = n & ~(size_t)15;
    c = crc_vclmul(c, p, m);
    p += m;
    n -= m;
  } else if (level >= 1 && n >= 64) {
    size_t m = n & ~(size_t)15;
    c = crc_clmul(c, p, m);
    p += m;
    n -= m;
  }
#endif
  return ~crc_table(c, p, n);
}

static void crc32_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int j = 0; j < 8; j++) c = c & 1 ? (c >> 1) ^ POLY : c >> 1;
    table[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; i++)
    for (int t = 1; t < 8; t++) table[t][i] = table[0][table[t - 1][i] & 0xff] ^ (table[t - 1][i] >> 8);
  k_512[0] = fold_k(512 + 32);
  k_512[1] = fold_k(512 - 32);
  k_128[0] = fold_k(128 + 32);
  k_128[1] = fold_k(128 - 32);
  k_1024[0] = fold_k(1024 + 32);
  k_1024[1] = fold_k(1024 - 32);
  k_256[0] = fold_k(256 + 32);
  k_256[1] = fold_k(256 - 32);
  k_64 = fold_k(64);
  /* P with its x^32 term, reflected over 33 bits; and floor(x^64 / P), reflected likewise. */
  k_poly[0] = ((uint64_t)POLY << 1) | 1;
  {
    /* Long division of x^64 by P in the normal bit order, then reflected over 33 bits. */
    uint64_t normal_p = 0x104c11db7ull, rem = 0, q = 0;
    for (int i = 64; i >= 0; i--) {
      rem = (rem << 1) | (i == 64 ? 1 : 0);
      q <<= 1;
      if (rem & (1ull << 32)) {
        rem ^= normal_p;
        q |= 1;
      }
    }
    uint64_t r = 0;
    for (int i = 0; i < 33; i++)
      if (q & (1ull << i)) r |= 1ull << (32 - i);
    k_poly[1] = r;
  }
#ifdef HAVE_CLMUL
  __builtin_cpu_init();
  if (__builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1")) {
    best = 1;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("vpclmulqdq")) best = 2;
  }
#endif
  level = best;
  uint32_t shift = x_pow_mod_p(4096 * 8);
  for (int t = 0; t < 4; t++)
    for (uint32_t i = 0; i < 256; i++) shift_table[t][i] = mult_mod_p(shift, i << (8 * t));
}

/* The bytes of a TypedArray or DataView argument. */
static int get_bytes(napi_env env, napi_value v, const uint8_t **data, size_t *len) {
  bool is;
  if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
    napi_typedarray_type type;
    size_t count;
    void *p;
    if (napi_get_typedarray_info(env, v, &type, &count, &p, NULL, NULL) != napi_ok) return 0;
    size_t size = 1;
    switch (type) {
      case napi_int16_array: case napi_uint16_array: size = 2; break;
      case napi_int32_array: case napi_uint32_array: case napi_float32_array: size = 4; break;
      case napi_float64_array: case napi_bigint64_array: case napi_biguint64_array: size = 8; break;
      default: size = 1;
    }
    *data = p;
    *len = count * size;
    return 1;
  }
  if (napi_is_dataview(env, v, &is) == napi_ok && is) {
    void *p;
    if (napi_get_dataview_info(env, v, len, &p, NULL, NULL) != napi_ok) return 0;
    *data = p;
    return 1;
  }
  return 0;
}

static napi_value crc32_fn(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], out;
  const uint8_t *data;
  size_t len;
  uint32_t seed = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      !get_bytes(env, argv[0], &data, &len)) {
    napi_throw_type_error(env, "EINVAL", "crc32(bytes, seed)");
    return NULL;
  }
  if (argc >= 2) {
    napi_valuetype t;
    napi_typeof(env, argv[1], &t);
    if (t == napi_number) {
      napi_get_value_uint32(env, argv[1], &seed); /* ToUint32: the low 32 bits, as zlib's u32 */
    } else if (t != napi_undefined) {
      napi_throw_type_error(env, "EINVAL", "crc32: the seed must be a number");
      return NULL;
    }
  }
  napi_create_uint32(env, crc32_update(seed, data, len), &out);
  return out;
}

uint32_t nbdsnap_crc32(uint32_t crc, const uint8_t *p, size_t n) { return crc32_update(crc, p, n); }

/* The CRC of p[0..n), out[k] that of its k-th `block`-sized piece. Safe on any thread. */
uint32_t nbdsnap_crc32_blocks(const uint8_t *p, size_t n, uint32_t block, uint32_t *out) {
  uint32_t whole = 0;
  for (size_t at = 0, k = 0; at < n; at += block, k++) {
    size_t m = n - at < block ? n - at : block;
    uint32_t c = crc32_update(0, p + at, m);
    out[k] = c;
    if (at == 0)
      whole = c;
    else if (m == 4096)
      whole = shift_table[0][whole & 0xff] ^ shift_table[1][(whole >> 8) & 0xff] ^ shift_table[2][(whole >> 16) & 0xff] ^
              shift_table[3][whole >> 24] ^ c;
    else
      whole = mult_mod_p(x_pow_mod_p((uint64_t)m * 8), whole) ^ c;
  }
  return whole;
}

static napi_value crc32_blocks_fn(napi_env env, napi_callback_info info) {
  napi_value argv[3], out;
  const uint8_t *data;
  size_t len, count;
  uint32_t block;
  napi_typedarray_type type;
  void *sums;
  if (!native_args(env, info, 3, argv) || !get_bytes(env, argv[0], &data, &len) ||
      napi_get_value_uint32(env, argv[1], &block) != napi_ok || block == 0 ||
      napi_get_typedarray_info(env, argv[2], &type, &count, &sums, NULL, NULL) != napi_ok ||
      type != napi_uint32_array || count < (len + block - 1) / block) {
    napi_throw_type_error(env, "EINVAL", "crc32Blocks(bytes, block, out: Uint32Array of ceil(length / block))");
    return NULL;
  }
  uint32_t whole = nbdsnap_crc32_blocks(data, len, block, sums);
  napi_create_uint32(env, whole, &out);
  return out;
}

/* crc32Use(level) -> the level in use: 0 tables, 1 PCLMULQDQ, 2 VPCLMULQDQ, capped at the CPU's. */
static napi_value crc32_use_fn(napi_env env, napi_callback_info info) {
  napi_value argv[1], out;
  int32_t want;
  if (native_args(env, info, 1, argv) && napi_get_value_int32(env, argv[0], &want) == napi_ok)
    level = want < 0 ? 0 : want > best ? best : want;
  napi_create_int32(env, level, &out);
  return out;
}

void register_read_crc(napi_env env, napi_value exports); /* read-crc.c */

void register_crc32(napi_env env, napi_value exports) {
  crc32_init();
  register_read_crc(env, exports);
  napi_property_descriptor props[] = {
    NATIVE_METHOD("crc32", crc32_fn),
    NATIVE_METHOD("crc32Blocks", crc32_blocks_fn),
    NATIVE_METHOD("crc32Use", crc32_use_fn),
  };
  NATIVE_DEFINE(env, exports, props);
}
