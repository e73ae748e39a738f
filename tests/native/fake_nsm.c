/*
 * A fake libnsm.so for tests: the same C ABI as aws-nitro-enclaves-nsm-api's
 * nsm-lib (nsm-lib/src/lib.rs), none of its behaviour beyond what the tests need.
 *
 * Built by tests/unit/test_libnsm.py:
 *     gcc -shared -fPIC -O2 -Wall -Werror -o libnsm.so tests/native/fake_nsm.c
 *
 * Behaviour (all state is reset by nsm_lib_init):
 * - nsm_lib_init returns FAKE_FD, or -1 when FAKE_NSM_FAIL_INIT=1.
 * - 32 PCRs of 48 bytes; PCR i < 16 starts filled with byte i, the others zero.
 *   PCRs 0..15 and 31 are locked (ReadOnlyIndex on extend); index >= 32 is InvalidIndex.
 * - extend is NOT SHA-384 but a deterministic mix the tests recompute:
 *   new[j] = old[j] ^ data[j % len] ^ j   (new[j] = old[j] ^ j when len == 0).
 * - nsm_get_attestation_doc returns "FAKE" then, for user_data, nonce, public_key
 *   (ABI order), a 4-byte big-endian length and the bytes, or FFFFFFFF for NULL.
 *   user_data "ERR:<n>" returns error code n; user_data "BIG" makes a 20000-byte
 *   document (BufferTooSmall for any smaller buffer). Every call sleeps 100 us
 *   and counts overlapping calls (fake_nsm_overlaps) so tests can see a missing lock.
 * - nsm_get_random fills a byte counter, at most FAKE_NSM_RANDOM_CHUNK (default 100)
 *   bytes per call.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Values of the upstream enum (src/api/mod.rs, #[repr(C)] enum ErrorCode). */
typedef enum {
    SUCCESS, INVALID_ARGUMENT, INVALID_INDEX, INVALID_RESPONSE, READ_ONLY_INDEX,
    INVALID_OPERATION, BUFFER_TOO_SMALL, INPUT_TOO_LARGE, INTERNAL_ERROR
} ErrorCode;

#define FAKE_FD 42
#define PCRS 32
#define PCR_LEN 48
#define BIG_DOC 20000

static uint8_t pcr[PCRS][PCR_LEN];
static uint8_t counter;
static int open_fd = -1, chunk = 100, in_call, overlaps, random_calls, exit_calls;

int fake_nsm_overlaps(void) { return overlaps; }
int fake_nsm_random_calls(void) { return random_calls; }
int fake_nsm_exit_calls(void) { return exit_calls; }

static bool locked(uint16_t i) { return i < 16 || i == 31; }

/* Upstream's nsm_get_raw_from_vec: copy what fits, report the copied size. */
static ErrorCode put(const uint8_t *src, uint32_t n, uint8_t *dst, uint32_t *cap) {
    if (dst == NULL) { *cap = 0; return BUFFER_TOO_SMALL; }
    ErrorCode rc = *cap >= n ? SUCCESS : BUFFER_TOO_SMALL;
    if (*cap > n) *cap = n;
    memcpy(dst, src, *cap);
    return rc;
}

int32_t nsm_lib_init(void) {
    const char *fail = getenv("FAKE_NSM_FAIL_INIT"), *c = getenv("FAKE_NSM_RANDOM_CHUNK");
    if (fail != NULL && strcmp(fail, "1") == 0) return -1;
    memset(pcr, 0, sizeof pcr);
    for (int i = 0; i < 16; i++) memset(pcr[i], i, PCR_LEN);
    chunk = c != NULL ? atoi(c) : 100;
    counter = 0;
    in_call = overlaps = random_calls = exit_calls = 0;
    return open_fd = FAKE_FD;
}

void nsm_lib_exit(int32_t fd) {
    if (fd == open_fd) open_fd = -1;
    exit_calls++;
}

ErrorCode nsm_describe_pcr(int32_t fd, uint16_t index, bool *lock, uint8_t *data,
                           uint32_t *data_len) {
    if (fd != open_fd) return INTERNAL_ERROR;
    if (index >= PCRS) return INVALID_INDEX;
    *lock = locked(index);
    return put(pcr[index], PCR_LEN, data, data_len);
}

ErrorCode nsm_extend_pcr(int32_t fd, uint16_t index, const uint8_t *data, uint32_t data_len,
                         uint8_t *pcr_data, uint32_t *pcr_data_len) {
    if (fd != open_fd) return INTERNAL_ERROR;
    if (data == NULL) return INVALID_ARGUMENT;
    if (index >= PCRS) return INVALID_INDEX;
    if (locked(index)) return READ_ONLY_INDEX;
    for (uint32_t j = 0; j < PCR_LEN; j++)
        pcr[index][j] ^= (uint8_t)((data_len ? data[j % data_len] : 0) ^ j);
    return put(pcr[index], PCR_LEN, pcr_data, pcr_data_len);
}

static uint8_t *field(uint8_t *out, const uint8_t *p, uint32_t n) {
    uint32_t len = p == NULL ? 0xFFFFFFFFu : n;
    for (int k = 3; k >= 0; k--) *out++ = (uint8_t)(len >> (8 * k));
    if (p != NULL) { memcpy(out, p, n); out += n; }
    return out;
}

ErrorCode nsm_get_attestation_doc(int32_t fd, const uint8_t *user_data, uint32_t user_data_len,
                                  const uint8_t *nonce_data, uint32_t nonce_len,
                                  const uint8_t *pub_key_data, uint32_t pub_key_len,
                                  uint8_t *att_doc_data, uint32_t *att_doc_len) {
    static uint8_t doc[BIG_DOC];
    const struct timespec pause = {0, 100000};
    ErrorCode rc;
    uint8_t *end;

    if (__atomic_fetch_add(&in_call, 1, __ATOMIC_SEQ_CST) != 0)
        __atomic_fetch_add(&overlaps, 1, __ATOMIC_SEQ_CST);
    nanosleep(&pause, NULL);
    if (fd != open_fd) {
        rc = INTERNAL_ERROR;
    } else if (user_data != NULL && user_data_len > 4 && memcmp(user_data, "ERR:", 4) == 0) {
        int n = 0;
        for (uint32_t k = 4; k < user_data_len; k++) n = n * 10 + (user_data[k] - '0');
        rc = (ErrorCode)n;
    } else if (user_data != NULL && user_data_len == 3 && memcmp(user_data, "BIG", 3) == 0) {
        memset(doc, 'B', BIG_DOC);
        rc = put(doc, BIG_DOC, att_doc_data, att_doc_len);
    } else if ((uint64_t)user_data_len + nonce_len + pub_key_len > BIG_DOC - 16) {
        rc = INPUT_TOO_LARGE;
    } else {
        end = field(doc + 4, user_data, user_data_len);
        end = field(end, nonce_data, nonce_len);
        end = field(end, pub_key_data, pub_key_len);
        memcpy(doc, "FAKE", 4);
        rc = put(doc, (uint32_t)(end - doc), att_doc_data, att_doc_len);
    }
    __atomic_fetch_sub(&in_call, 1, __ATOMIC_SEQ_CST);
    return rc;
}

ErrorCode nsm_get_random(int32_t fd, uint8_t *buf, uintptr_t *buf_len) {
    if (fd < 0 || buf == NULL || *buf_len == 0) return INVALID_ARGUMENT;
    if (fd != open_fd) return INTERNAL_ERROR;
    random_calls++;
    if (*buf_len > (uintptr_t)chunk) *buf_len = (uintptr_t)chunk;
    for (uintptr_t k = 0; k < *buf_len; k++) buf[k] = counter++;
    return SUCCESS;
}
