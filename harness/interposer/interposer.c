/*
 * p11tls interposer: a PKCS#11 module that forwards every call to the real
 * module, appends one JSON object per call to a record file and, when a
 * profile asks for it, emulates a constrained token on top of the real one.
 *
 * Configuration: the file named by $P11TLS_INTERPOSER_CONF, one setting per
 * line, "key value"; blank lines and lines starting with '#' are ignored.
 * "module PATH" (the real module) and "record PATH" (the JSON-lines file,
 * opened O_APPEND) take the rest of the line, as do token_model and
 * token_manufacturer.  The other emulation settings take
 * whitespace-separated words, and a word starting with '#' ends the line
 * (the harness writes the name of a number there for the reader).  A number
 * is decimal or 0x-hex; where a CKM_/CKR_/CKO_/CKK_ value is expected, a name
 * from the tables below works too.  Repeatable lines are marked (*):
 *
 *   hide MECH (*)              gone from C_GetMechanismList/Info; any call
 *                              with it (C_*Init, key generation, wrap, derive)
 *                              -> CKR_MECHANISM_INVALID
 *   add_combined MECH (*)      CKM_ECDSA_SHA1/224/256/384/512: advertised with
 *                              CKM_ECDSA's info; the data is hashed here
 *                              (libcrypto) and CKM_ECDSA signs the digest below
 *   sign_max_input BYTES       total input of one signing operation; the call
 *                              that goes past it fails and ends the operation
 *   sign_limit_mechanism MECH (*)  the limit applies to these only (none: all)
 *   sign_over_limit_rv CKR     what that call returns (CKR_GENERAL_ERROR)
 *   sign_multipart yes|no      no: C_SignUpdate -> CKR_FUNCTION_NOT_SUPPORTED
 *   refuse_create CKO CKK|any CKR (*)  C_CreateObject of that class and key
 *                              type returns CKR; nothing is created
 *   pin_max_tries N            emulated user-PIN retry counter (one per
 *                              process, for every slot): token flags
 *                              COUNT_LOW/FINAL_TRY/LOCKED, then C_Login ->
 *                              CKR_PIN_LOCKED without calling the real module;
 *                              a successful C_Login or C_InitPIN resets it
 *   token_pin_flags FLAG...    ORed into C_GetTokenInfo's flags: one or more of
 *                              CKF_USER_PIN_COUNT_LOW, CKF_USER_PIN_FINAL_TRY,
 *                              CKF_USER_PIN_LOCKED (names or numbers); the
 *                              token only says so, C_Login is not changed
 *   token_model TEXT           C_GetTokenInfo's model (1-16 bytes) /
 *   token_manufacturer TEXT    manufacturerID (1-32): the rest of the line,
 *                              '#' included (OpenSC's "PKCS#15 emulated"): no
 *                              comment follows a text; a token that says it
 *                              is another device
 *   token_firmware MAJOR.MINOR C_GetTokenInfo's firmwareVersion (0-255 each)
 *   token_write_protected yes  C_GetTokenInfo says CKF_WRITE_PROTECTED: a
 *                              read-only run's clients that open read-write
 *                              sessions unless the token is write-protected
 *                              (Java's SunPKCS11) open read-only ones
 *   latency C_FN MS (*)        sleep MS before forwarding each C_FN call
 *                              (not a size query with a NULL output buffer)
 *   fail_after C_FN N CKR (*)  after N successful C_FN calls (size queries do
 *                              not count), every further C_FN returns CKR
 *                              without calling the real module (a signing
 *                              call's failure also ends the real operation)
 *   hang_after C_FN N (*)      after N successful C_FN calls, every further
 *                              C_FN never returns (a device that stopped
 *                              answering: the Pico HSM on an 8 KB APDU)
 *
 * Any other key, or a bad value, is an error: C_Initialize prints the reason
 * to stderr and returns CKR_GENERAL_ERROR.  The Python side
 * (harness/profile.py, harness/interposer/__init__.py) validates everything
 * first, so this file only has to read what it is given.
 *
 * Every emulated decision is marked on the call's record line: "emulated" is
 * one of hidden, mechanism_list, combined, limit, no_multipart,
 * refuse_create, pin_counter, pin_locked, pin_flags, fail_after; a delayed
 * call has "latency_ms" (and its "us" includes the delay).  Mechanisms and
 * lengths are recorded as the client gave them (CKM_ECDSA_SHA256 over 6039
 * bytes), with what went below in real_mechanism / real_in_len.
 *
 * Rules this file keeps:
 *  - without emulation settings, never change what the real module does:
 *    arguments, return codes and output buffers pass through untouched;
 *    errno is preserved; and make no call of its own: the real module (and a
 *    pkcs11-spy below) sees exactly the client's calls.  What the record says
 *    of a key is what the client itself gave or was told (see "what is known
 *    of keys").  Emulation may call below on its own (the real operation an
 *    emulated failure ends, the mechanism list it edits);
 *  - never write a PIN or the value of any attribute except the harmless ones
 *    listed in harmless_value();
 *  - one write() per line, under a mutex (Java calls from several threads);
 *    the emulation settings are read once, before the first call is
 *    forwarded, and only read afterwards; its mutable state (operations in
 *    progress, PIN counter, call counters) has its own locks or atomics;
 *  - fork-safe: a fork waits for every lock to be free and the child starts
 *    with fresh ones and looks up its own thread id (fork_prepare).
 *
 * PKCS#11 3.0: C_GetFunctionList gives the 2.40 list as always.
 * C_GetInterfaceList and C_GetInterface work before C_Initialize too: they
 * read the configuration and load the real module (once, under load_lock;
 * quietly: a configuration that does not load is reported by C_Initialize,
 * and meanwhile the 2.40 interface is offered).  When the real module's
 * C_GetInterface gives a "PKCS 11" 3.x list, the offer is "PKCS 11" 3.0 (this
 * file's 3.0 list: the 2.40 wrappers, then recording wrappers of the 3.0
 * functions, forwarded to the real 3.x list) and "PKCS 11" 2.40 (the 2.40
 * list; vendor interfaces are not offered), and a C_GetInterface request
 * the offer cannot meet is put to the real module for its error code.
 * Otherwise the offer is "PKCS 11" 2.40 alone.  The emulation settings act
 * on the 2.40 functions only; the 3.0 functions are forwarded and recorded.
 * These two functions are not recorded (nor is C_GetFunctionList).  The
 * p11-kit 0.24 pkcs11.h has no 3.0 types: the block after the includes
 * defines the few needed when the header lacks them.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/opensslv.h>
#include <p11-kit/pkcs11.h>

#ifndef CKR_UNWRAPPING_KEY_HANDLE_INVALID
#define CKR_UNWRAPPING_KEY_HANDLE_INVALID 0xF0UL /* missing from p11-kit 0.24 */
#endif

/* ---------------------------------------------- PKCS#11 3.0 types (minimal)
 * Only when pkcs11.h lacks them (p11-kit before 0.25): the interface struct,
 * the 3.0 function list and the prototypes of the two exported functions, as
 * in the OASIS PKCS#11 3.0 headers (pkcs11t.h, pkcs11f.h, pkcs11.h).  A header
 * that has CKF_INTERFACE_FORK_SAFE is taken to have all of them. */
#ifndef CKF_INTERFACE_FORK_SAFE
#define CKF_INTERFACE_FORK_SAFE 0x00000001UL
#define CKF_END_OF_MESSAGE 0x00000001UL

typedef struct CK_INTERFACE {
    CK_CHAR *pInterfaceName;
    CK_VOID_PTR pFunctionList;
    CK_FLAGS flags;
} CK_INTERFACE;
typedef CK_INTERFACE *CK_INTERFACE_PTR;
typedef CK_INTERFACE_PTR *CK_INTERFACE_PTR_PTR;

typedef CK_RV (*CK_C_GetInterfaceList)(CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount);
typedef CK_RV (*CK_C_GetInterface)(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
                                   CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags);
typedef CK_RV (*CK_C_LoginUser)(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType,
                                CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen,
                                CK_UTF8CHAR_PTR pUsername, CK_ULONG ulUsernameLen);
typedef CK_RV (*CK_C_SessionCancel)(CK_SESSION_HANDLE hSession, CK_FLAGS flags);
typedef CK_RV (*CK_C_MessageEncryptInit)(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                                         CK_OBJECT_HANDLE hKey);
typedef CK_RV (*CK_C_EncryptMessage)(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                     CK_ULONG ulParameterLen, CK_BYTE_PTR pAssociatedData,
                                     CK_ULONG ulAssociatedDataLen, CK_BYTE_PTR pPlaintext,
                                     CK_ULONG ulPlaintextLen, CK_BYTE_PTR pCiphertext,
                                     CK_ULONG_PTR pulCiphertextLen);
typedef CK_RV (*CK_C_EncryptMessageBegin)(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                          CK_ULONG ulParameterLen, CK_BYTE_PTR pAssociatedData,
                                          CK_ULONG ulAssociatedDataLen);
typedef CK_RV (*CK_C_EncryptMessageNext)(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                         CK_ULONG ulParameterLen, CK_BYTE_PTR pPlaintextPart,
                                         CK_ULONG ulPlaintextPartLen,
                                         CK_BYTE_PTR pCiphertextPart,
                                         CK_ULONG_PTR pulCiphertextPartLen, CK_FLAGS flags);
typedef CK_RV (*CK_C_MessageEncryptFinal)(CK_SESSION_HANDLE hSession);
typedef CK_RV (*CK_C_MessageDecryptInit)(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                                         CK_OBJECT_HANDLE hKey);
typedef CK_RV (*CK_C_DecryptMessage)(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                     CK_ULONG ulParameterLen, CK_BYTE_PTR pAssociatedData,
                                     CK_ULONG ulAssociatedDataLen, CK_BYTE_PTR pCiphertext,
                                     CK_ULONG ulCiphertextLen, CK_BYTE_PTR pPlaintext,
                                     CK_ULONG_PTR pulPlaintextLen);
typedef CK_RV (*CK_C_DecryptMessageBegin)(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                          CK_ULONG ulParameterLen, CK_BYTE_PTR pAssociatedData,
                                          CK_ULONG ulAssociatedDataLen);
typedef CK_RV (*CK_C_DecryptMessageNext)(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                         CK_ULONG ulParameterLen, CK_BYTE_PTR pCiphertextPart,
                                         CK_ULONG ulCiphertextPartLen, CK_BYTE_PTR pPlaintextPart,
                                         CK_ULONG_PTR pulPlaintextPartLen, CK_FLAGS flags);
typedef CK_RV (*CK_C_MessageDecryptFinal)(CK_SESSION_HANDLE hSession);
typedef CK_RV (*CK_C_MessageSignInit)(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                                      CK_OBJECT_HANDLE hKey);
typedef CK_RV (*CK_C_SignMessage)(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                  CK_ULONG ulParameterLen, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
                                  CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen);
typedef CK_RV (*CK_C_SignMessageBegin)(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                       CK_ULONG ulParameterLen);
typedef CK_RV (*CK_C_SignMessageNext)(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                      CK_ULONG ulParameterLen, CK_BYTE_PTR pData,
                                      CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
                                      CK_ULONG_PTR pulSignatureLen);
typedef CK_RV (*CK_C_MessageSignFinal)(CK_SESSION_HANDLE hSession);
typedef CK_RV (*CK_C_MessageVerifyInit)(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                                        CK_OBJECT_HANDLE hKey);
typedef CK_RV (*CK_C_VerifyMessage)(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                    CK_ULONG ulParameterLen, CK_BYTE_PTR pData,
                                    CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
                                    CK_ULONG ulSignatureLen);
typedef CK_RV (*CK_C_VerifyMessageBegin)(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                         CK_ULONG ulParameterLen);
typedef CK_RV (*CK_C_VerifyMessageNext)(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                        CK_ULONG ulParameterLen, CK_BYTE_PTR pData,
                                        CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
                                        CK_ULONG ulSignatureLen);
typedef CK_RV (*CK_C_MessageVerifyFinal)(CK_SESSION_HANDLE hSession);

/* The 2.40 list, then the 24 functions added in 3.0, in the standard's order. */
typedef struct CK_FUNCTION_LIST_3_0 {
    CK_VERSION version;
    CK_C_Initialize C_Initialize;
    CK_C_Finalize C_Finalize;
    CK_C_GetInfo C_GetInfo;
    CK_C_GetFunctionList C_GetFunctionList;
    CK_C_GetSlotList C_GetSlotList;
    CK_C_GetSlotInfo C_GetSlotInfo;
    CK_C_GetTokenInfo C_GetTokenInfo;
    CK_C_GetMechanismList C_GetMechanismList;
    CK_C_GetMechanismInfo C_GetMechanismInfo;
    CK_C_InitToken C_InitToken;
    CK_C_InitPIN C_InitPIN;
    CK_C_SetPIN C_SetPIN;
    CK_C_OpenSession C_OpenSession;
    CK_C_CloseSession C_CloseSession;
    CK_C_CloseAllSessions C_CloseAllSessions;
    CK_C_GetSessionInfo C_GetSessionInfo;
    CK_C_GetOperationState C_GetOperationState;
    CK_C_SetOperationState C_SetOperationState;
    CK_C_Login C_Login;
    CK_C_Logout C_Logout;
    CK_C_CreateObject C_CreateObject;
    CK_C_CopyObject C_CopyObject;
    CK_C_DestroyObject C_DestroyObject;
    CK_C_GetObjectSize C_GetObjectSize;
    CK_C_GetAttributeValue C_GetAttributeValue;
    CK_C_SetAttributeValue C_SetAttributeValue;
    CK_C_FindObjectsInit C_FindObjectsInit;
    CK_C_FindObjects C_FindObjects;
    CK_C_FindObjectsFinal C_FindObjectsFinal;
    CK_C_EncryptInit C_EncryptInit;
    CK_C_Encrypt C_Encrypt;
    CK_C_EncryptUpdate C_EncryptUpdate;
    CK_C_EncryptFinal C_EncryptFinal;
    CK_C_DecryptInit C_DecryptInit;
    CK_C_Decrypt C_Decrypt;
    CK_C_DecryptUpdate C_DecryptUpdate;
    CK_C_DecryptFinal C_DecryptFinal;
    CK_C_DigestInit C_DigestInit;
    CK_C_Digest C_Digest;
    CK_C_DigestUpdate C_DigestUpdate;
    CK_C_DigestKey C_DigestKey;
    CK_C_DigestFinal C_DigestFinal;
    CK_C_SignInit C_SignInit;
    CK_C_Sign C_Sign;
    CK_C_SignUpdate C_SignUpdate;
    CK_C_SignFinal C_SignFinal;
    CK_C_SignRecoverInit C_SignRecoverInit;
    CK_C_SignRecover C_SignRecover;
    CK_C_VerifyInit C_VerifyInit;
    CK_C_Verify C_Verify;
    CK_C_VerifyUpdate C_VerifyUpdate;
    CK_C_VerifyFinal C_VerifyFinal;
    CK_C_VerifyRecoverInit C_VerifyRecoverInit;
    CK_C_VerifyRecover C_VerifyRecover;
    CK_C_DigestEncryptUpdate C_DigestEncryptUpdate;
    CK_C_DecryptDigestUpdate C_DecryptDigestUpdate;
    CK_C_SignEncryptUpdate C_SignEncryptUpdate;
    CK_C_DecryptVerifyUpdate C_DecryptVerifyUpdate;
    CK_C_GenerateKey C_GenerateKey;
    CK_C_GenerateKeyPair C_GenerateKeyPair;
    CK_C_WrapKey C_WrapKey;
    CK_C_UnwrapKey C_UnwrapKey;
    CK_C_DeriveKey C_DeriveKey;
    CK_C_SeedRandom C_SeedRandom;
    CK_C_GenerateRandom C_GenerateRandom;
    CK_C_GetFunctionStatus C_GetFunctionStatus;
    CK_C_CancelFunction C_CancelFunction;
    CK_C_WaitForSlotEvent C_WaitForSlotEvent;
    CK_C_GetInterfaceList C_GetInterfaceList;
    CK_C_GetInterface C_GetInterface;
    CK_C_LoginUser C_LoginUser;
    CK_C_SessionCancel C_SessionCancel;
    CK_C_MessageEncryptInit C_MessageEncryptInit;
    CK_C_EncryptMessage C_EncryptMessage;
    CK_C_EncryptMessageBegin C_EncryptMessageBegin;
    CK_C_EncryptMessageNext C_EncryptMessageNext;
    CK_C_MessageEncryptFinal C_MessageEncryptFinal;
    CK_C_MessageDecryptInit C_MessageDecryptInit;
    CK_C_DecryptMessage C_DecryptMessage;
    CK_C_DecryptMessageBegin C_DecryptMessageBegin;
    CK_C_DecryptMessageNext C_DecryptMessageNext;
    CK_C_MessageDecryptFinal C_MessageDecryptFinal;
    CK_C_MessageSignInit C_MessageSignInit;
    CK_C_SignMessage C_SignMessage;
    CK_C_SignMessageBegin C_SignMessageBegin;
    CK_C_SignMessageNext C_SignMessageNext;
    CK_C_MessageSignFinal C_MessageSignFinal;
    CK_C_MessageVerifyInit C_MessageVerifyInit;
    CK_C_VerifyMessage C_VerifyMessage;
    CK_C_VerifyMessageBegin C_VerifyMessageBegin;
    CK_C_VerifyMessageNext C_VerifyMessageNext;
    CK_C_MessageVerifyFinal C_MessageVerifyFinal;
} CK_FUNCTION_LIST_3_0;

CK_RV C_GetInterfaceList(CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount);
CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
                     CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags);
#endif /* !CKF_INTERFACE_FORK_SAFE: end of the PKCS#11 3.0 types */

/* The layout the 3.0 list relies on: 68 2.40 entries, then the 24 new ones. */
_Static_assert(offsetof(CK_FUNCTION_LIST_3_0, C_GetInterfaceList)
                   == sizeof(CK_FUNCTION_LIST) && sizeof(CK_FUNCTION_LIST)
                   == offsetof(CK_FUNCTION_LIST, C_Initialize) + 68 * sizeof(void (*)(void)),
               "CK_FUNCTION_LIST_3_0 must extend CK_FUNCTION_LIST");
_Static_assert(sizeof(CK_FUNCTION_LIST_3_0)
                   == offsetof(CK_FUNCTION_LIST_3_0, C_GetInterfaceList)
                   + 24 * sizeof(void (*)(void)),
               "CK_FUNCTION_LIST_3_0 must add 24 functions");

#define CONF_ENV "P11TLS_INTERPOSER_CONF"
#define EXPORT __attribute__((visibility("default")))
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ------------------------------------------------------------------ names */

struct name { CK_ULONG v; const char *n; };
#define TABLE(t) t, COUNT(t)

/* rv_names, mech_names, attr_names, class_names, key_type_names, user_names,
 * mgf_names, source_names, pin_flag_names: generated from the harness's one
 * PKCS#11 vocabulary (harness/pkcs11/) into the build directory by
 * harness/interposer/__init__.py. A value's canonical name comes first. */
#include "p11tls_names.h"

#define PIN_FLAGS (CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_LOCKED)

static const char *lookup(const struct name *t, size_t n, CK_ULONG v)
{
    for (size_t i = 0; i < n; i++)
        if (t[i].v == v)
            return t[i].n;
    return NULL;
}

/* ------------------------------------------------------ JSON line builder */

typedef struct { char *p; size_t len, cap; int oom; } jbuf;

static void jb_put(jbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 512;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1; /* the line is dropped, the call itself is unaffected */
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void jb_puts(jbuf *b, const char *s) { jb_put(b, s, strlen(s)); }

__attribute__((format(printf, 2, 3)))
static void jb_fmt(jbuf *b, const char *fmt, ...)
{
    char tmp[160]; /* only numbers and fixed words go through here */
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        jb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* ,"key": */
static void jb_key(jbuf *b, const char *key) { jb_fmt(b, ",\"%s\":", key); }

/* Length of the valid UTF-8 sequence at s, 0 when it is not valid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t len;
    if (s[0] < 0x80)
        return 1;
    else if (s[0] >= 0xc2 && s[0] <= 0xdf)
        len = 2;
    else if ((s[0] & 0xf0) == 0xe0)
        len = 3;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4)
        len = 4;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    return len;
}

/* A JSON string; invalid UTF-8 becomes U+FFFD so every line stays valid JSON. */
static void jb_str(jbuf *b, const void *data, size_t n)
{
    const unsigned char *s = data;
    jb_put(b, "\"", 1);
    for (size_t i = 0; i < n;) {
        size_t k = utf8_len(s + i, n - i);
        if (k == 0) {
            jb_puts(b, "\\ufffd");
            i++;
        } else if (k > 1) {
            jb_put(b, (const char *)s + i, k);
            i += k;
        } else {
            if (s[i] == '"' || s[i] == '\\')
                jb_fmt(b, "\\%c", s[i]);
            else if (s[i] < 0x20)
                jb_fmt(b, "\\u%04x", s[i]);
            else
                jb_put(b, (const char *)s + i, 1);
            i++;
        }
    }
    jb_put(b, "\"", 1);
}

static void jb_hex(jbuf *b, const void *data, size_t n)
{
    const unsigned char *s = data;
    static const char digits[] = "0123456789abcdef";
    jb_put(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        char two[2] = { digits[s[i] >> 4], digits[s[i] & 15] };
        jb_put(b, two, 2);
    }
    jb_put(b, "\"", 1);
}

/* "CKM_ECDSA", or "0x..." for a value not in the table. */
static void jb_name(jbuf *b, const struct name *t, size_t n, CK_ULONG v)
{
    const char *name = lookup(t, n, v);
    if (name)
        jb_fmt(b, "\"%s\"", name);
    else
        jb_fmt(b, "\"0x%lx\"", v);
}

/* A length, with CK_UNAVAILABLE_INFORMATION written as -1. */
static void jb_len(jbuf *b, CK_ULONG v)
{
    if (v == CK_UNAVAILABLE_INFORMATION)
        jb_puts(b, "-1");
    else
        jb_fmt(b, "%lu", v);
}

static void j_ulong(jbuf *b, const char *key, CK_ULONG v) { jb_key(b, key); jb_fmt(b, "%lu", v); }

static void j_hexflags(jbuf *b, const char *key, CK_ULONG v)
{
    jb_key(b, key);
    jb_fmt(b, "\"0x%lx\"", v);
}

/* An output handle: written only when the call succeeded. */
static void j_handle_out(jbuf *b, const char *key, CK_RV rv, const CK_ULONG *h)
{
    jb_key(b, key);
    if (rv == CKR_OK && h)
        jb_fmt(b, "%lu", *h);
    else
        jb_puts(b, "null");
}

/*
 * The output-buffer protocol: out_buf is the caller's buffer size, or null
 * for a size query (NULL buffer); out_len is what the module reported back.
 * `cap` is *plen as it was before the call.
 */
static void j_out(jbuf *b, const void *buf, CK_ULONG cap, const CK_ULONG *plen)
{
    jb_key(b, "out_buf");
    if (buf)
        jb_fmt(b, "%lu", cap);
    else
        jb_puts(b, "null");
    jb_key(b, "out_len");
    if (plen)
        jb_len(b, *plen);
    else
        jb_puts(b, "null");
}

static int is_pss(CK_MECHANISM_TYPE m)
{
    return m == CKM_RSA_PKCS_PSS || m == CKM_SHA1_RSA_PKCS_PSS || m == CKM_SHA224_RSA_PKCS_PSS
        || m == CKM_SHA256_RSA_PKCS_PSS || m == CKM_SHA384_RSA_PKCS_PSS
        || m == CKM_SHA512_RSA_PKCS_PSS;
}

/* "mechanism": {"name", "value"} and "params" (PSS, OAEP, else length or null). */
static void j_mech(jbuf *b, const CK_MECHANISM *m)
{
    jb_key(b, "mechanism");
    if (!m) {
        jb_puts(b, "null,\"params\":null");
        return;
    }
    jb_puts(b, "{\"name\":");
    jb_name(b, TABLE(mech_names), m->mechanism);
    jb_fmt(b, ",\"value\":%lu}", m->mechanism);
    jb_key(b, "params");
    if (is_pss(m->mechanism) && m->pParameter
        && m->ulParameterLen == sizeof(CK_RSA_PKCS_PSS_PARAMS)) {
        const CK_RSA_PKCS_PSS_PARAMS *p = m->pParameter;
        jb_puts(b, "{\"hash\":");
        jb_name(b, TABLE(mech_names), p->hashAlg);
        jb_puts(b, ",\"mgf\":");
        jb_name(b, TABLE(mgf_names), p->mgf);
        jb_fmt(b, ",\"salt_len\":%lu}", p->sLen);
    } else if (m->mechanism == CKM_RSA_PKCS_OAEP && m->pParameter
               && m->ulParameterLen == sizeof(CK_RSA_PKCS_OAEP_PARAMS)) {
        const CK_RSA_PKCS_OAEP_PARAMS *p = m->pParameter;
        jb_puts(b, "{\"hash\":");
        jb_name(b, TABLE(mech_names), p->hashAlg);
        jb_puts(b, ",\"mgf\":");
        jb_name(b, TABLE(mgf_names), p->mgf);
        jb_puts(b, ",\"source\":");
        jb_name(b, TABLE(source_names), p->source);
        jb_fmt(b, ",\"label_len\":%lu}", p->ulSourceDataLen);
    } else if (m->pParameter && m->ulParameterLen) {
        /* Other parameters (IVs, ECDH peer points): the length only. */
        jb_fmt(b, "{\"len\":%lu}", m->ulParameterLen);
    } else {
        jb_puts(b, "null");
    }
}

static int is_bool_attr(CK_ATTRIBUTE_TYPE t)
{
    switch (t) {
    case CKA_TOKEN: case CKA_PRIVATE: case CKA_TRUSTED: case CKA_SENSITIVE: case CKA_ENCRYPT:
    case CKA_DECRYPT: case CKA_WRAP: case CKA_UNWRAP: case CKA_SIGN: case CKA_SIGN_RECOVER:
    case CKA_VERIFY: case CKA_VERIFY_RECOVER: case CKA_DERIVE: case CKA_EXTRACTABLE:
    case CKA_LOCAL: case CKA_NEVER_EXTRACTABLE: case CKA_ALWAYS_SENSITIVE: case CKA_MODIFIABLE:
    case CKA_COPYABLE: case CKA_DESTROYABLE: case CKA_ALWAYS_AUTHENTICATE:
    case CKA_WRAP_WITH_TRUSTED:
        return 1;
    default:
        return 0;
    }
}

/*
 * ,"value":... for the harmless attributes only (this list is the whole
 * allow-list; everything else, above all CKA_VALUE, private exponents and
 * primes, is written as type and length alone).
 */
static void harmless_value(jbuf *b, const CK_ATTRIBUTE *a)
{
    const CK_ULONG n = a->ulValueLen;
    if (!a->pValue || n == CK_UNAVAILABLE_INFORMATION || n > 1024)
        return;
    if ((a->type == CKA_CLASS || a->type == CKA_KEY_TYPE || a->type == CKA_MODULUS_BITS)
        && n == sizeof(CK_ULONG)) {
        CK_ULONG v;
        memcpy(&v, a->pValue, sizeof v);
        jb_key(b, "value");
        if (a->type == CKA_CLASS)
            jb_name(b, TABLE(class_names), v);
        else if (a->type == CKA_KEY_TYPE)
            jb_name(b, TABLE(key_type_names), v);
        else
            jb_fmt(b, "%lu", v);
    } else if (is_bool_attr(a->type) && n == sizeof(CK_BBOOL)) {
        jb_key(b, "value");
        jb_puts(b, *(const CK_BBOOL *)a->pValue ? "true" : "false");
    } else if (a->type == CKA_ID || a->type == CKA_EC_PARAMS) {
        jb_key(b, "value");
        jb_hex(b, a->pValue, n);
    } else if (a->type == CKA_LABEL) {
        jb_key(b, "value");
        jb_str(b, a->pValue, n);
    }
}

#define TEMPLATE_MAX 256 /* attributes written per template */

/*
 * "key": [{"type", "len", "value" (harmless only)}, ...].  with_values is 0
 * when the module did not fill the template (a failed C_GetAttributeValue
 * leaves the caller's buffers as they were: never read them then).  caps,
 * for a filled template, are the caller's buffer sizes: a length beyond its
 * buffer is not believed.
 */
static void j_template(jbuf *b, const char *key, const CK_ATTRIBUTE *t, CK_ULONG n,
                       int with_values, const CK_ULONG *caps)
{
    jb_key(b, key);
    if (!t) {
        jb_puts(b, "null");
        return;
    }
    jb_puts(b, "[");
    for (CK_ULONG i = 0; i < n && i < TEMPLATE_MAX; i++) {
        jb_puts(b, i ? ",{\"type\":" : "{\"type\":");
        jb_name(b, TABLE(attr_names), t[i].type);
        jb_puts(b, ",\"len\":");
        jb_len(b, t[i].ulValueLen);
        if (with_values && (!caps || t[i].ulValueLen <= caps[i]))
            harmless_value(b, &t[i]);
        jb_puts(b, "}");
    }
    jb_puts(b, "]");
}

/* ------------------------------------------------------------ module state */

static _Atomic(CK_FUNCTION_LIST_PTR) real; /* set once, by the first successful load */
/* The locks, in the order the fork handlers take them (see fork_prepare);
 * no code holds two of them at once. */
static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t sess_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t key_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t pin_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t write_lock = PTHREAD_MUTEX_INITIALIZER;
static int record_fd = -1;
static atomic_ulong seq_counter;

static __thread long cached_tid; /* 0: not looked up yet in this thread (or process) */

static long thread_id(void)
{
    if (!cached_tid)
        cached_tid = (long)syscall(SYS_gettid);
    return cached_tid;
}

static void record_line(const jbuf *b)
{
    if (b->oom || record_fd < 0)
        return;
    pthread_mutex_lock(&write_lock);
    for (size_t off = 0; off < b->len;) {
        ssize_t n = write(record_fd, b->p + off, b->len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    pthread_mutex_unlock(&write_lock);
}

/*
 * fork(): a child starts with only the forking thread, and with every lock
 * as it was at the fork.  So the fork waits until no thread is inside a
 * section under one of these locks (prepare takes them all), the parent lets
 * them go, and the child gets fresh ones; the child's thread looks its own
 * id up again.  Registered once, when this module is loaded (glibc removes
 * the handlers when the module is unloaded).
 */
static void fork_prepare(void)
{
    pthread_mutex_lock(&load_lock);
    pthread_mutex_lock(&sess_lock);
    pthread_mutex_lock(&key_lock);
    pthread_mutex_lock(&pin_lock);
    pthread_mutex_lock(&write_lock);
}

static void fork_parent(void)
{
    pthread_mutex_unlock(&write_lock);
    pthread_mutex_unlock(&pin_lock);
    pthread_mutex_unlock(&key_lock);
    pthread_mutex_unlock(&sess_lock);
    pthread_mutex_unlock(&load_lock);
}

static void fork_child(void)
{
    pthread_mutex_t *locks[] = { &load_lock, &sess_lock, &key_lock, &pin_lock, &write_lock };
    for (size_t i = 0; i < sizeof locks / sizeof locks[0]; i++)
        pthread_mutex_init(locks[i], NULL);
    cached_tid = 0;
}

__attribute__((constructor)) static void register_fork_handlers(void)
{
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

/* ------------------------------------------------------ what is known of keys */

/*
 * The "key" of an *Init call's record is what the client itself gave or was
 * told about the handle: the templates of C_CreateObject, C_GenerateKey(Pair)
 * (with what the mechanism contributes: class, key type, and a private EC
 * key's CKA_EC_PARAMS from the public template), C_CopyObject, C_UnwrapKey,
 * C_DeriveKey and C_SetAttributeValue; the template of the C_FindObjectsInit
 * whose C_FindObjects returned the handle; the values C_GetAttributeValue
 * returned.  The interposer never asks the module itself: on a card that
 * would be APDUs the client never sent, and a spy below would log calls the
 * client never made.  What is not known is null; nothing known, "key": null.
 *
 * Object handles are valid across all sessions of an application, so the
 * book is keyed by handle.  An entry goes with its object: C_DestroyObject,
 * the close of the session a session object belongs to, C_Finalize, and a
 * fresh C_Initialize.
 */
enum { KA_CLASS, KA_KEY_TYPE, KA_ID, KA_LABEL, KA_EC_PARAMS, KA_COUNT };
static const CK_ATTRIBUTE_TYPE ka_types[KA_COUNT] = {
    CKA_CLASS, CKA_KEY_TYPE, CKA_ID, CKA_LABEL, CKA_EC_PARAMS,
};
#define KA_MAX 1024     /* longest value kept */
#define BOOK_MAX 4096   /* entries; the oldest goes first */

struct kvals {
    unsigned known;                /* bit i: v[i]/len[i] hold ka_types[i]'s value */
    unsigned char *v[KA_COUNT];    /* malloc'd (NULL for an empty value) */
    CK_ULONG len[KA_COUNT];
    int token;                     /* CKA_TOKEN: 1, 0, or -1 not known */
};
#define KVALS_NONE { 0, { 0 }, { 0 }, -1 }

static void kv_free(struct kvals *k)
{
    for (int i = 0; i < KA_COUNT; i++)
        free(k->v[i]);
    *k = (struct kvals)KVALS_NONE;
}

static void kv_set(struct kvals *k, int i, const void *p, CK_ULONG len)
{
    unsigned char *copy = NULL;
    if (len && (!(copy = malloc(len)))) /* no memory: the value stays unknown */
        return;
    if (len)
        memcpy(copy, p, len);
    free(k->v[i]);
    k->v[i] = copy;
    k->len[i] = len;
    k->known |= 1u << i;
}

static void kv_ulong(struct kvals *k, int i, CK_ULONG v) { kv_set(k, i, &v, sizeof v); }

/* Later values win: b's known values and token-ness go into a (b is emptied). */
static void kv_merge(struct kvals *a, struct kvals *b)
{
    for (int i = 0; i < KA_COUNT; i++)
        if (b->known & (1u << i)) {
            free(a->v[i]);
            a->v[i] = b->v[i];
            a->len[i] = b->len[i];
            a->known |= 1u << i;
            b->v[i] = NULL;
        }
    if (b->token >= 0)
        a->token = b->token;
    kv_free(b);
}

static void kv_copy(struct kvals *to, const struct kvals *from)
{
    *to = (struct kvals)KVALS_NONE;
    for (int i = 0; i < KA_COUNT; i++)
        if (from->known & (1u << i))
            kv_set(to, i, from->v[i], from->len[i]);
    to->token = from->token;
}

/*
 * The key attributes of a template whose values are present: a value the
 * caller handed in, or one the module filled (caps: the caller's buffer
 * sizes; a length beyond its buffer, or CK_UNAVAILABLE_INFORMATION, is not
 * believed).  A NULL pValue is a length query: no value.
 */
static void kv_template(struct kvals *k, const CK_ATTRIBUTE *t, CK_ULONG n, const CK_ULONG *caps)
{
    for (CK_ULONG j = 0; t && j < n && (!caps || j < TEMPLATE_MAX); j++) {
        const CK_ATTRIBUTE *a = &t[j];
        CK_ULONG len = a->ulValueLen;
        if (!a->pValue || len == CK_UNAVAILABLE_INFORMATION || len > KA_MAX
            || (caps && len > caps[j]))
            continue;
        if (a->type == CKA_TOKEN && len == sizeof(CK_BBOOL)) {
            k->token = *(const CK_BBOOL *)a->pValue ? 1 : 0;
            continue;
        }
        for (int i = 0; i < KA_COUNT; i++)
            if (a->type == ka_types[i] && (i > KA_KEY_TYPE || len == sizeof(CK_ULONG)))
                kv_set(k, i, a->pValue, len);
    }
}

struct key_entry {
    CK_OBJECT_HANDLE h;
    CK_SESSION_HANDLE owner; /* the session a session object lives in; 0: none known */
    struct kvals k;
    struct key_entry *next;
};
static struct key_entry *book;  /* newest first */
static size_t book_size;

static void book_free_list(struct key_entry *e)
{
    while (e) {
        struct key_entry *next = e->next;
        kv_free(&e->k);
        free(e);
        e = next;
    }
}

static void book_clear(void)
{
    pthread_mutex_lock(&key_lock);
    struct key_entry *all = book;
    book = NULL;
    book_size = 0;
    pthread_mutex_unlock(&key_lock);
    book_free_list(all);
}

/* Forget one handle (owner 0), or every session object of a session (h 0). */
static void book_forget_where(CK_OBJECT_HANDLE h, CK_SESSION_HANDLE owner)
{
    struct key_entry *gone = NULL;
    pthread_mutex_lock(&key_lock);
    for (struct key_entry **p = &book; *p;) {
        struct key_entry *e = *p;
        if (owner ? e->owner == owner : e->h == h) {
            *p = e->next;
            e->next = gone;
            gone = e;
            book_size--;
        } else {
            p = &e->next;
        }
    }
    pthread_mutex_unlock(&key_lock);
    book_free_list(gone);
}

static void book_forget(CK_OBJECT_HANDLE h) { book_forget_where(h, 0); }

/*
 * What the client learned or said about handle h (k is emptied).  fresh: a
 * new object made in session s (what was known of the handle before is of an
 * object that is gone); it is a session object unless CKA_TOKEN was true.
 * Not fresh: a value seen in session s; a CKA_TOKEN false seen there ties
 * the entry to s when nothing else does.
 */
static void book_put(CK_OBJECT_HANDLE h, CK_SESSION_HANDLE s, int fresh, struct kvals *k)
{
    if (!k->known && k->token < 0 && !fresh)
        return;
    struct key_entry *e, *evicted = NULL;
    pthread_mutex_lock(&key_lock);
    for (e = book; e && e->h != h; e = e->next)
        ;
    if (!e && (e = calloc(1, sizeof *e))) {
        e->h = h;
        e->k = (struct kvals)KVALS_NONE;
        e->next = book;
        book = e;
        if (++book_size > BOOK_MAX) { /* bound memory: drop the oldest */
            struct key_entry **p = &book;
            while ((*p)->next)
                p = &(*p)->next;
            evicted = *p;
            *p = NULL;
            book_size--;
        }
    }
    if (e) {
        if (fresh) {
            kv_free(&e->k);
            e->owner = k->token == 1 ? 0 : s;
        } else if (k->token == 0 && !e->owner) {
            e->owner = s;
        }
        kv_merge(&e->k, k);
    }
    pthread_mutex_unlock(&key_lock);
    kv_free(k);
    book_free_list(evicted);
}

/* Whether C_GetAttributeValue filled what it could (the others: unavailable). */
static int attr_ok(CK_RV rv)
{
    return rv == CKR_OK || rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID
        || rv == CKR_BUFFER_TOO_SMALL;
}

/* {"class", "key_type", "id", "label"[, "ec_params"]} of what is known of h,
 * as a malloc'd JSON text; NULL when nothing is. */
static char *book_describe(CK_OBJECT_HANDLE h)
{
    struct kvals k = KVALS_NONE;
    pthread_mutex_lock(&key_lock);
    for (struct key_entry *e = book; e; e = e->next)
        if (e->h == h) {
            kv_copy(&k, &e->k);
            break;
        }
    pthread_mutex_unlock(&key_lock);
    if (!k.known)
        return NULL;
    jbuf b = { 0 };
    CK_ULONG v;
    jb_puts(&b, "{\"class\":");
    if (k.known & (1u << KA_CLASS) && k.len[KA_CLASS] == sizeof v) {
        memcpy(&v, k.v[KA_CLASS], sizeof v);
        jb_name(&b, TABLE(class_names), v);
    } else {
        jb_puts(&b, "null");
    }
    jb_puts(&b, ",\"key_type\":");
    if (k.known & (1u << KA_KEY_TYPE) && k.len[KA_KEY_TYPE] == sizeof v) {
        memcpy(&v, k.v[KA_KEY_TYPE], sizeof v);
        jb_name(&b, TABLE(key_type_names), v);
    } else {
        jb_puts(&b, "null");
    }
    jb_puts(&b, ",\"id\":");
    if (k.known & (1u << KA_ID))
        jb_hex(&b, k.v[KA_ID], k.len[KA_ID]);
    else
        jb_puts(&b, "null");
    jb_puts(&b, ",\"label\":");
    if (k.known & (1u << KA_LABEL))
        jb_str(&b, k.v[KA_LABEL], k.len[KA_LABEL]);
    else
        jb_puts(&b, "null");
    if (k.known & (1u << KA_EC_PARAMS) && k.len[KA_EC_PARAMS] > 0) {
        jb_puts(&b, ",\"ec_params\":"); /* the curve: public */
        jb_hex(&b, k.v[KA_EC_PARAMS], k.len[KA_EC_PARAMS]);
    }
    jb_put(&b, "}", 2); /* with the terminating NUL */
    kv_free(&k);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* The key type a key-generation mechanism gives its keys, or -1. */
static long keygen_type(const CK_MECHANISM *m)
{
    if (!m)
        return -1;
    switch (m->mechanism) {
    case CKM_RSA_PKCS_KEY_PAIR_GEN: case CKM_RSA_X9_31_KEY_PAIR_GEN: return CKK_RSA;
    case CKM_EC_KEY_PAIR_GEN: return CKK_EC;
    case CKM_EC_EDWARDS_KEY_PAIR_GEN: return CKK_EC_EDWARDS;
    case CKM_DSA_KEY_PAIR_GEN: return CKK_DSA;
    case CKM_DH_PKCS_KEY_PAIR_GEN: return CKK_DH;
    case CKM_AES_KEY_GEN: return CKK_AES;
    case CKM_GENERIC_SECRET_KEY_GEN: return CKK_GENERIC_SECRET;
    default: return -1;
    }
}

/* A new object of class cls (and the mechanism's key type) from a template. */
static void book_new(CK_OBJECT_HANDLE h, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls,
                     const CK_MECHANISM *m, const CK_ATTRIBUTE *t, CK_ULONG n,
                     const CK_ATTRIBUTE *more, CK_ULONG more_n)
{
    struct kvals k = KVALS_NONE;
    if (cls != CK_UNAVAILABLE_INFORMATION) /* else the template says, if anything */
        kv_ulong(&k, KA_CLASS, cls);
    long type = keygen_type(m);
    if (type >= 0)
        kv_ulong(&k, KA_KEY_TYPE, (CK_ULONG)type);
    /* more: the public template, whose CKA_EC_PARAMS a private EC key gets */
    for (CK_ULONG i = 0; more && i < more_n; i++)
        if (more[i].type == CKA_EC_PARAMS && more[i].pValue && more[i].ulValueLen <= KA_MAX)
            kv_set(&k, KA_EC_PARAMS, more[i].pValue, more[i].ulValueLen);
    kv_template(&k, t, n, NULL);
    book_put(h, s, 1, &k);
}

/* C_CopyObject: the copy has the original's values but where the template
 * says otherwise. */
static void book_copy(CK_OBJECT_HANDLE from, CK_OBJECT_HANDLE to, CK_SESSION_HANDLE s,
                      const CK_ATTRIBUTE *t, CK_ULONG n)
{
    struct kvals k = KVALS_NONE, more = KVALS_NONE;
    pthread_mutex_lock(&key_lock);
    for (struct key_entry *e = book; e; e = e->next)
        if (e->h == from) {
            kv_copy(&k, &e->k);
            break;
        }
    pthread_mutex_unlock(&key_lock);
    kv_template(&more, t, n, NULL);
    kv_merge(&k, &more);
    book_put(to, s, 1, &k);
}

/* ,"key_handle":N,"key":{...} (takes ownership of json) */
static void j_key(jbuf *b, CK_OBJECT_HANDLE h, char *json)
{
    j_ulong(b, "key_handle", h);
    jb_key(b, "key");
    jb_puts(b, json ? json : "null");
    free(json);
}

/* ------------------------------------------------------ function indexes */

/* The PKCS#11 2.40 functions, for per-function settings (latency, fail_after). */
#define FUNCTIONS(X)                                                           \
    X(Initialize) X(Finalize) X(GetInfo) X(GetSlotList) X(GetSlotInfo)         \
    X(GetTokenInfo) X(GetMechanismList) X(GetMechanismInfo) X(InitToken)       \
    X(InitPIN) X(SetPIN) X(OpenSession) X(CloseSession) X(CloseAllSessions)    \
    X(GetSessionInfo) X(GetOperationState) X(SetOperationState) X(Login)       \
    X(Logout) X(CreateObject) X(CopyObject) X(DestroyObject) X(GetObjectSize)  \
    X(GetAttributeValue) X(SetAttributeValue) X(FindObjectsInit)               \
    X(FindObjects) X(FindObjectsFinal) X(EncryptInit) X(Encrypt)               \
    X(EncryptUpdate) X(EncryptFinal) X(DecryptInit) X(Decrypt)                 \
    X(DecryptUpdate) X(DecryptFinal) X(DigestInit) X(Digest) X(DigestUpdate)   \
    X(DigestKey) X(DigestFinal) X(SignInit) X(Sign) X(SignUpdate) X(SignFinal) \
    X(SignRecoverInit) X(SignRecover) X(VerifyInit) X(Verify) X(VerifyUpdate)  \
    X(VerifyFinal) X(VerifyRecoverInit) X(VerifyRecover)                       \
    X(DigestEncryptUpdate) X(DecryptDigestUpdate) X(SignEncryptUpdate)         \
    X(DecryptVerifyUpdate) X(GenerateKey) X(GenerateKeyPair) X(WrapKey)        \
    X(UnwrapKey) X(DeriveKey) X(SeedRandom) X(GenerateRandom)                  \
    X(GetFunctionStatus) X(CancelFunction) X(WaitForSlotEvent)

/* The PKCS#11 3.0 functions this file records (C_GetInterfaceList and
 * C_GetInterface are not recorded); numbered after FN_COUNT, so the
 * per-function settings, indexed below FN_COUNT, never apply to them. */
#define FUNCTIONS_3_0(X)                                                       \
    X(LoginUser) X(SessionCancel) X(MessageEncryptInit) X(EncryptMessage)      \
    X(EncryptMessageBegin) X(EncryptMessageNext) X(MessageEncryptFinal)        \
    X(MessageDecryptInit) X(DecryptMessage) X(DecryptMessageBegin)             \
    X(DecryptMessageNext) X(MessageDecryptFinal) X(MessageSignInit)            \
    X(SignMessage) X(SignMessageBegin) X(SignMessageNext) X(MessageSignFinal)  \
    X(MessageVerifyInit) X(VerifyMessage) X(VerifyMessageBegin)                \
    X(VerifyMessageNext) X(MessageVerifyFinal)

#define FN_ENUM(name) FN_##name,
#define FN_NAME(name) "C_" #name,
enum fn_id { FUNCTIONS(FN_ENUM) FN_COUNT, FUNCTIONS_3_0(FN_ENUM) FN_ALL };
static const char *const fn_names[FN_ALL] = { FUNCTIONS(FN_NAME) "", FUNCTIONS_3_0(FN_NAME) };

/* ------------------------------------------------------ emulation settings */

#define MAX_MECHS 64
#define MAX_RULES 16

struct refuse_rule { CK_OBJECT_CLASS cls; CK_KEY_TYPE type; int any_type; CK_RV rv; };
struct fail_rule { int on; CK_ULONG calls; CK_RV rv; };

/* ECDSA-with-hash mechanisms this file can add, and the digest each needs. */
static const struct { CK_MECHANISM_TYPE mech; const char *digest; } combinable[] = {
    { CKM_ECDSA_SHA1, "SHA1" },         { CKM_ECDSA_SHA224, "SHA2-224" },
    { CKM_ECDSA_SHA256, "SHA2-256" },   { CKM_ECDSA_SHA384, "SHA2-384" },
    { CKM_ECDSA_SHA512, "SHA2-512" },
};

/* Written only while loading (under load_lock, before `real` is published),
 * read-only afterwards. */
static struct {
    CK_MECHANISM_TYPE hide[MAX_MECHS];
    size_t n_hide;
    int combined[COUNT(combinable)]; /* 1: advertise combinable[i] */
    const EVP_MD *md[COUNT(combinable)];
    int mech_list_changed;           /* hide or add_combined present */
    int has_limit;
    CK_ULONG max_input;
    CK_MECHANISM_TYPE limit_mechs[MAX_MECHS];
    size_t n_limit_mechs;            /* 0: the limit applies to every mechanism */
    CK_RV over_limit_rv;
    int no_multipart;
    struct refuse_rule refuse[MAX_RULES];
    size_t n_refuse;
    CK_ULONG pin_max_tries;          /* 0: no PIN emulation */
    CK_FLAGS token_pin_flags;        /* ORed into C_GetTokenInfo's flags */
    int token_write_protected;       /* C_GetTokenInfo: CKF_WRITE_PROTECTED */
    char token_model[16], token_manufacturer[32]; /* blank-padded; "" : the real one's */
    int token_firmware_set;
    CK_VERSION token_firmware;
    unsigned long latency_ms[FN_COUNT];
    struct fail_rule fail[FN_COUNT];
    CK_ULONG hang_after[FN_COUNT];   /* calls + 1; 0: no hang_after */
} emu = { .over_limit_rv = CKR_GENERAL_ERROR };

static atomic_ulong ok_calls[FN_COUNT]; /* successful calls, for fail_after, hang_after */

/* The emulated decisions, as written in the record's "emulated" field. */
static const char EMU_HIDDEN[] = "hidden", EMU_MECH_LIST[] = "mechanism_list",
                  EMU_COMBINED[] = "combined", EMU_LIMIT[] = "limit",
                  EMU_NO_MULTIPART[] = "no_multipart", EMU_REFUSE[] = "refuse_create",
                  EMU_PIN_COUNTER[] = "pin_counter", EMU_PIN_LOCKED[] = "pin_locked",
                  EMU_PIN_FLAGS[] = "pin_flags", EMU_FAIL_AFTER[] = "fail_after";

static int mech_in(const CK_MECHANISM_TYPE *list, size_t n, CK_MECHANISM_TYPE m)
{
    for (size_t i = 0; i < n; i++)
        if (list[i] == m)
            return 1;
    return 0;
}

static int is_hidden(CK_MECHANISM_TYPE m) { return mech_in(emu.hide, emu.n_hide, m); }

/* The digest of an added combined mechanism, NULL when `m` is not one. */
static const EVP_MD *combined_md(CK_MECHANISM_TYPE m)
{
    for (size_t i = 0; i < COUNT(combinable); i++)
        if (emu.combined[i] && combinable[i].mech == m)
            return emu.md[i];
    return NULL;
}

static int limit_applies(CK_MECHANISM_TYPE m)
{
    return emu.has_limit
        && (emu.n_limit_mechs == 0 || mech_in(emu.limit_mechs, emu.n_limit_mechs, m));
}

/* ------------------------------------------------------------- one call */

struct call {
    const char *fn;
    enum fn_id id;
    unsigned long seq;
    struct timespec wall, t0, t1;
    int err;              /* errno as the real module left it */
    int query;            /* NULL output buffer: a size query, not counted by fail_after */
    const char *emulated; /* the emulated decision that shaped the result, or NULL */
    unsigned long latency;
    jbuf j;
};

static void call_start(struct call *c, const char *fn, enum fn_id id)
{
    c->fn = fn;
    c->id = id;
    c->seq = atomic_fetch_add(&seq_counter, 1) + 1;
    clock_gettime(CLOCK_REALTIME, &c->wall);
    c->err = 0;
    c->query = 0;
    c->emulated = NULL;
    c->latency = 0;
    memset(&c->j, 0, sizeof c->j);
}

static void call_header(struct call *c)
{
    jb_fmt(&c->j, "{\"fn\":\"%s\",\"seq\":%lu,\"pid\":%ld,\"tid\":%ld,\"ts\":%lld.%06ld",
           c->fn, c->seq, (long)getpid(), thread_id(), (long long)c->wall.tv_sec,
           c->wall.tv_nsec / 1000);
}

/*
 * Faults, before the real call: 1 (and *rv) when fail_after has struck, else
 * the configured latency is slept (inside the timed span: the client waits
 * for it as it would for a slow card) and 0.  A size query is not delayed: a
 * token answers it without doing the work.
 */
static int fault_before(struct call *c, CK_RV *rv)
{
    if (c->id >= FN_COUNT) /* a 3.0 function: no per-function settings */
        return 0;
    const struct fail_rule *f = &emu.fail[c->id];
    if (f->on && atomic_load(&ok_calls[c->id]) >= f->calls) {
        c->emulated = EMU_FAIL_AFTER;
        *rv = f->rv;
        return 1;
    }
    if (emu.hang_after[c->id] && !c->query
        && atomic_load(&ok_calls[c->id]) >= emu.hang_after[c->id] - 1) {
        for (;;) /* never returns, never forwards: the caller must give up on us */
            pause();
    }
    if (emu.latency_ms[c->id] && !c->query) {
        struct timespec ts = { (time_t)(emu.latency_ms[c->id] / 1000),
                               (long)(emu.latency_ms[c->id] % 1000) * 1000000L };
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
        c->latency = emu.latency_ms[c->id];
    }
    return 0;
}

static CK_RV call_end(struct call *c, CK_RV rv)
{
    long long us = (c->t1.tv_sec - c->t0.tv_sec) * 1000000LL
                   + (c->t1.tv_nsec - c->t0.tv_nsec) / 1000;
    if (rv == CKR_OK && !c->query && c->id < FN_COUNT
        && (emu.fail[c->id].on || emu.hang_after[c->id]))
        atomic_fetch_add(&ok_calls[c->id], 1);
    if (c->emulated)
        jb_fmt(&c->j, ",\"emulated\":\"%s\"", c->emulated);
    if (c->latency)
        jb_fmt(&c->j, ",\"latency_ms\":%lu", c->latency);
    jb_puts(&c->j, ",\"rv\":");
    jb_name(&c->j, TABLE(rv_names), rv);
    jb_fmt(&c->j, ",\"us\":%lld}\n", us);
    record_line(&c->j);
    free(c->j.p);
    errno = c->err;
    return rv;
}

/*
 * Every wrapper is: START, anything read before the call (key description),
 * FORWARD (the timed real call) or TIMED(expression) when the emulation may
 * answer instead, its own fields, END.  Before the first successful load
 * nothing is forwarded or recorded.
 */
#define START(name)                                                      \
    CK_FUNCTION_LIST_PTR r = atomic_load(&real);                         \
    if (!r)                                                              \
        return CKR_CRYPTOKI_NOT_INITIALIZED;                             \
    struct call c;                                                       \
    call_start(&c, "C_" #name, FN_##name)
/* The real function's result (an expression). */
#define REAL(name, ...)                                                  \
    (r->C_##name ? r->C_##name(__VA_ARGS__) : CKR_FUNCTION_NOT_SUPPORTED)
#define TIMED(expr)                                                      \
    clock_gettime(CLOCK_MONOTONIC, &c.t0);                               \
    CK_RV rv;                                                            \
    if (!fault_before(&c, &rv))                                          \
        rv = (expr);                                                     \
    c.err = errno;                                                       \
    clock_gettime(CLOCK_MONOTONIC, &c.t1);                               \
    call_header(&c)
#define FORWARD(name, ...) TIMED(REAL(name, __VA_ARGS__))
#define END return call_end(&c, rv)
#define J (&c.j)
#define SESSION(s) j_ulong(J, "session", s)

/* CKR_MECHANISM_INVALID for a hidden mechanism, as a token without it says. */
static CK_RV refuse_hidden(struct call *c)
{
    c->emulated = EMU_HIDDEN;
    return CKR_MECHANISM_INVALID;
}

#define HIDDEN(m) ((m) && is_hidden((m)->mechanism))

/* ---------------------------------------------------------- configuration */

/* Set (under load_lock) while C_GetInterface/List try an early load: its
 * errors are left for C_Initialize to report. */
static int load_quiet;

__attribute__((format(printf, 1, 2)))
static void say(const char *fmt, ...)
{
    if (load_quiet)
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

static int config_error(const char *path, int line, const char *what, const char *arg)
{
    if (line)
        say("p11tls interposer: %s line %d: %s%s\n", path, line, what, arg);
    else
        say("p11tls interposer: %s: %s%s\n", path, what, arg);
    return -1;
}

#define KNOWN_KEYS "module, record, hide, add_combined, sign_max_input, " \
                   "sign_limit_mechanism, sign_over_limit_rv, sign_multipart, refuse_create, " \
                   "pin_max_tries, token_pin_flags, token_model, token_manufacturer, " \
                   "token_firmware, token_write_protected, latency, fail_after, hang_after"

/* A whole word as an unsigned number (decimal or 0x-hex). */
static int parse_number(const char *word, CK_ULONG *out)
{
    if (!word || !*word || *word == '-' || *word == '+')
        return 0;
    char *end;
    errno = 0;
    unsigned long v = strtoul(word, &end, 0);
    if (errno || *end)
        return 0;
    *out = v;
    return 1;
}

/* A number, or a name from `t` (the prefix says which table). */
static int parse_named(const char *word, const struct name *t, size_t n, CK_ULONG *out)
{
    if (word && ((*word >= 'A' && *word <= 'Z') || (*word >= 'a' && *word <= 'z'))) {
        for (size_t i = 0; i < n; i++)
            if (!strcmp(t[i].n, word)) {
                *out = t[i].v;
                return 1;
            }
        return 0;
    }
    return parse_number(word, out);
}

static int parse_function(const char *word, enum fn_id *out)
{
    for (int i = 0; word && i < FN_COUNT; i++)
        if (!strcmp(fn_names[i], word)) {
            *out = (enum fn_id)i;
            return 1;
        }
    return 0;
}

/*
 * One emulation setting.  0: done; 1: not an emulation key; -1: bad value,
 * with the reason in *why.
 */
static int parse_emulation(const char *key, char *value, const char **why)
{
    if (!strcmp(key, "token_model") || !strcmp(key, "token_manufacturer")) {
        int model = !strcmp(key, "token_model");
        size_t max = model ? sizeof emu.token_model : sizeof emu.token_manufacturer;
        size_t len = strlen(value);
        while (len && (value[len - 1] == ' ' || value[len - 1] == '\t'))
            len--;
        if (len > max) {
            *why = model ? "more than 16 characters for key " : "more than 32 characters for key ";
            return -1;
        }
        char *dst = model ? emu.token_model : emu.token_manufacturer;
        memset(dst, ' ', max);
        memcpy(dst, value, len);
        return 0;
    }
    if (!strcmp(key, "token_firmware")) {
        unsigned major, minor;
        char end;
        if (sscanf(value, "%u.%u%c", &major, &minor, &end) != 2 || major > 255 || minor > 255) {
            *why = "not MAJOR.MINOR (0-255 each) for key ";
            return -1;
        }
        emu.token_firmware.major = (CK_BYTE)major;
        emu.token_firmware.minor = (CK_BYTE)minor;
        emu.token_firmware_set = 1;
        return 0;
    }
    char *w[5] = { 0 }, *save = NULL;
    int n = 0;
    for (char *tok = strtok_r(value, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
        if (*tok == '#')
            break; /* the rest is a comment */
        if (n == 5) {
            *why = "too many values for key ";
            return -1;
        }
        w[n++] = tok;
    }
    CK_ULONG a, b, v;
    enum fn_id fn;
#define WANT(count, text)                                                \
    do {                                                                 \
        if (n != (count)) {                                              \
            *why = "expected " text " after key ";                       \
            return -1;                                                   \
        }                                                                \
    } while (0)
#define BAD(text)                                                        \
    do {                                                                 \
        *why = text;                                                     \
        return -1;                                                       \
    } while (0)
    if (!strcmp(key, "hide")) {
        WANT(1, "one mechanism");
        if (!parse_named(w[0], TABLE(mech_names), &v))
            BAD("not a mechanism number or known CKM_ name: hide ");
        if (emu.n_hide == MAX_MECHS)
            BAD("too many mechanisms (64) for key ");
        emu.hide[emu.n_hide++] = v;
        emu.mech_list_changed = 1;
    } else if (!strcmp(key, "add_combined")) {
        WANT(1, "one mechanism");
        if (!parse_named(w[0], TABLE(mech_names), &v))
            BAD("not a mechanism number or known CKM_ name: add_combined ");
        size_t i = 0;
        while (i < COUNT(combinable) && combinable[i].mech != v)
            i++;
        if (i == COUNT(combinable))
            BAD("only CKM_ECDSA_SHA1/224/256/384/512 can be added: add_combined ");
        emu.combined[i] = 1;
        emu.mech_list_changed = 1;
    } else if (!strcmp(key, "sign_max_input")) {
        WANT(1, "a byte count");
        if (!parse_number(w[0], &v))
            BAD("not a number: sign_max_input ");
        emu.has_limit = 1;
        emu.max_input = v;
    } else if (!strcmp(key, "sign_limit_mechanism")) {
        WANT(1, "one mechanism");
        if (!parse_named(w[0], TABLE(mech_names), &v))
            BAD("not a mechanism number or known CKM_ name: sign_limit_mechanism ");
        if (emu.n_limit_mechs == MAX_MECHS)
            BAD("too many mechanisms (64) for key ");
        emu.limit_mechs[emu.n_limit_mechs++] = v;
    } else if (!strcmp(key, "sign_over_limit_rv")) {
        WANT(1, "one return code");
        if (!parse_named(w[0], TABLE(rv_names), &v) || v == CKR_OK)
            BAD("not an error code (number or known CKR_ name): sign_over_limit_rv ");
        emu.over_limit_rv = v;
    } else if (!strcmp(key, "sign_multipart")) {
        WANT(1, "yes or no");
        if (strcmp(w[0], "yes") && strcmp(w[0], "no"))
            BAD("expected yes or no: sign_multipart ");
        emu.no_multipart = !strcmp(w[0], "no");
    } else if (!strcmp(key, "refuse_create")) {
        WANT(3, "CLASS KEY_TYPE|any RV");
        struct refuse_rule rule = { 0 };
        if (!parse_named(w[0], TABLE(class_names), &a))
            BAD("not an object class (number or known CKO_ name): refuse_create ");
        if (!strcmp(w[1], "any"))
            rule.any_type = 1;
        else if (!parse_named(w[1], TABLE(key_type_names), &b))
            BAD("not a key type (number, known CKK_ name or any): refuse_create ");
        if (!parse_named(w[2], TABLE(rv_names), &v) || v == CKR_OK)
            BAD("not an error code (number or known CKR_ name): refuse_create ");
        if (emu.n_refuse == MAX_RULES)
            BAD("too many rules (16) for key ");
        rule.cls = a;
        rule.type = rule.any_type ? 0 : b;
        rule.rv = v;
        emu.refuse[emu.n_refuse++] = rule;
    } else if (!strcmp(key, "pin_max_tries")) {
        WANT(1, "a number");
        if (!parse_number(w[0], &v) || v == 0)
            BAD("not a number of tries (1 or more): pin_max_tries ");
        emu.pin_max_tries = v;
    } else if (!strcmp(key, "token_pin_flags")) {
        if (n == 0)
            BAD("expected one or more CKF_USER_PIN_ flags after key ");
        for (int i = 0; i < n; i++) {
            if (!parse_named(w[i], TABLE(pin_flag_names), &v) || !v || (v & ~PIN_FLAGS))
                BAD("not CKF_USER_PIN_COUNT_LOW, CKF_USER_PIN_FINAL_TRY, "
                    "CKF_USER_PIN_LOCKED or a number of those bits: token_pin_flags ");
            emu.token_pin_flags |= v;
        }
    } else if (!strcmp(key, "token_write_protected")) {
        WANT(1, "yes");
        if (strcmp(w[0], "yes"))
            BAD("not yes: token_write_protected ");
        emu.token_write_protected = 1;
    } else if (!strcmp(key, "latency")) {
        WANT(2, "C_FUNCTION MILLISECONDS");
        if (!parse_function(w[0], &fn))
            BAD("not a PKCS#11 2.40 function name (C_Sign, ...): latency ");
        if (!parse_number(w[1], &v) || v > 600000)
            BAD("not a number of milliseconds (at most 600000): latency ");
        emu.latency_ms[fn] = v;
    } else if (!strcmp(key, "fail_after")) {
        WANT(3, "C_FUNCTION CALLS RV");
        if (!parse_function(w[0], &fn))
            BAD("not a PKCS#11 2.40 function name (C_Sign, ...): fail_after ");
        if (!parse_number(w[1], &a))
            BAD("not a number of calls: fail_after ");
        if (!parse_named(w[2], TABLE(rv_names), &v) || v == CKR_OK)
            BAD("not an error code (number or known CKR_ name): fail_after ");
        emu.fail[fn] = (struct fail_rule){ 1, a, v };
    } else if (!strcmp(key, "hang_after")) {
        WANT(2, "C_FUNCTION CALLS");
        if (!parse_function(w[0], &fn))
            BAD("not a PKCS#11 2.40 function name (C_Sign, ...): hang_after ");
        if (!parse_number(w[1], &a) || a >= (CK_ULONG)-1)
            BAD("not a number of calls: hang_after ");
        emu.hang_after[fn] = a + 1;
    } else {
        return 1;
    }
#undef WANT
#undef BAD
    return 0;
}

/*
 * The digests of the added combined mechanisms, from a library context of our
 * own: the client's OpenSSL configuration (which may route digests to a
 * PKCS#11 provider, perhaps this very module) must not matter here.
 */
static const char *fetch_digests(void)
{
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    static OSSL_LIB_CTX *ctx;
    for (size_t i = 0; i < COUNT(combinable); i++) {
        if (!emu.combined[i] || emu.md[i])
            continue;
        if (!ctx && !(ctx = OSSL_LIB_CTX_new()))
            return "OSSL_LIB_CTX_new failed";
        if (!(emu.md[i] = EVP_MD_fetch(ctx, combinable[i].digest, NULL)))
            return combinable[i].digest;
    }
#else
    const EVP_MD *(*const fns[])(void) = { EVP_sha1, EVP_sha224, EVP_sha256, EVP_sha384,
                                           EVP_sha512 };
    for (size_t i = 0; i < COUNT(combinable); i++)
        if (emu.combined[i])
            emu.md[i] = fns[i]();
#endif
    return NULL;
}

static CK_ULONG pin_tries_left; /* under pin_lock */

/* ------------------------------------------------ PKCS#11 3.0 interfaces */

static CK_FUNCTION_LIST function_list;          /* defined at the end */
static CK_FUNCTION_LIST_3_0 function_list_3_0;  /* defined at the end */
static CK_CHAR pkcs11_name[] = "PKCS 11";
/* The name as CK_INTERFACE holds it: CK_CHAR * in the OASIS headers and in the
 * block above, char * in p11-kit 0.25's pkcs11.h; void * converts to either. */
#define IFACE_NAME ((void *)pkcs11_name)

/*
 * The real module's 3.0 side is looked at only when a client first calls
 * C_GetInterface or C_GetInterfaceList here (a client of C_GetFunctionList
 * never makes the real module see a 3.0 call), and only through its
 * C_GetInterface: OpenSC 0.23's pkcs11-spy crashes in C_GetInterfaceList
 * over a 2.x module.  Everything below is written once, by discover(), under
 * load_lock, and read-only afterwards (real3 is atomic: the 3.0 wrappers read
 * it without the lock).
 */
static void *real_lib;                         /* set by load() */
static CK_C_GetFunctionList real_get_function_list;
static int discovered;
static _Atomic(CK_FUNCTION_LIST_3_0 *) real3;  /* the real module's 3.x list, or NULL */
static CK_C_GetInterface real_get_interface;   /* set when real3 is */
static CK_INTERFACE interfaces[2] = { { IFACE_NAME, &function_list, 0 } }; /* the offer */
static CK_ULONG n_interfaces = 1;

static int is_pkcs11_interface(const CK_INTERFACE *i)
{
    return i && i->pInterfaceName && i->pFunctionList
        && !strcmp((const char *)i->pInterfaceName, (const char *)pkcs11_name);
}

static CK_BYTE interface_major(const CK_INTERFACE *i)
{
    return ((const CK_VERSION *)i->pFunctionList)->major;
}

/* Whether two functions come from the same loaded object (dlsym on a module
 * handle also searches the module's dependencies). */
static int same_object(const void *a, const void *b)
{
    Dl_info ia, ib;
    return dladdr(a, &ia) && dladdr(b, &ib) && ia.dli_fbase == ib.dli_fbase;
}

/*
 * Once, after a successful load, under load_lock: the real "PKCS 11" 3.x
 * list (3.0 if offered, else the default interface when it is 3.x: later
 * versions extend the 3.0 list).  With one, the offer is the 3.0 interface
 * (the real one's flags), then the 2.40 one; without, the 2.40 one alone.
 */
static void discover(void)
{
    if (discovered)
        return;
    discovered = 1;
    CK_C_GetInterface get_one;
    *(void **)&get_one = dlsym(real_lib, "C_GetInterface");
    if (!get_one || get_one == C_GetInterface
        || !same_object((const void *)get_one, (const void *)real_get_function_list))
        return;
    CK_VERSION v30 = { 3, 0 };
    CK_INTERFACE_PTR found = NULL;
    if (get_one(pkcs11_name, &v30, &found, 0) != CKR_OK || !is_pkcs11_interface(found)
        || interface_major(found) != 3) {
        found = NULL;
        if (get_one(pkcs11_name, NULL, &found, 0) != CKR_OK || !is_pkcs11_interface(found)
            || interface_major(found) != 3)
            return;
    }
    interfaces[0] = (CK_INTERFACE){ IFACE_NAME, &function_list_3_0, found->flags };
    interfaces[1] = (CK_INTERFACE){ IFACE_NAME, &function_list, 0 };
    n_interfaces = 2;
    real_get_interface = get_one;
    atomic_store(&real3, (CK_FUNCTION_LIST_3_0 *)found->pFunctionList);
}

/* Reads the configuration, opens the record file, loads the real module. */
static CK_RV load(void)
{
    /* A failed attempt may have parsed part of the settings: start afresh. */
    memset(&emu, 0, sizeof emu);
    emu.over_limit_rv = CKR_GENERAL_ERROR;
    const char *path = getenv(CONF_ENV);
    if (!path || !*path) {
        say("p11tls interposer: " CONF_ENV " is not set: it must name the "
            "configuration file written by the harness\n");
        return CKR_GENERAL_ERROR;
    }
    FILE *f = fopen(path, "re");
    if (!f) {
        config_error(path, 0, "cannot open: ", strerror(errno));
        return CKR_GENERAL_ERROR;
    }
    char line[4096], module[4096] = "", record[4096] = "";
    int lineno = 0, bad = 0;
    while (!bad && fgets(line, sizeof line, f)) {
        lineno++;
        size_t len = strlen(line);
        if (len && line[len - 1] == '\n')
            line[--len] = 0;
        else if (!feof(f)) {
            bad = config_error(path, lineno, "line too long", "");
            break;
        }
        char *key = line + strspn(line, " \t");
        if (!*key || *key == '#')
            continue;
        char *value = key + strcspn(key, " \t");
        if (*value)
            *value++ = 0;
        value += strspn(value, " \t");
        const char *why = NULL;
        int emulation;
        if (!*value)
            bad = config_error(path, lineno, "no value for key ", key);
        else if (!strcmp(key, "module"))
            snprintf(module, sizeof module, "%s", value);
        else if (!strcmp(key, "record"))
            snprintf(record, sizeof record, "%s", value);
        else if ((emulation = parse_emulation(key, value, &why)) < 0)
            bad = config_error(path, lineno, why, key);
        else if (emulation > 0)
            bad = config_error(path, lineno, "unknown key (known: " KNOWN_KEYS "): ", key);
    }
    fclose(f);
    if (!bad && !*module)
        bad = config_error(path, 0, "missing line: ", "module PATH");
    if (!bad && !*record)
        bad = config_error(path, 0, "missing line: ", "record PATH");
    const char *missing = bad ? NULL : fetch_digests();
    if (missing)
        bad = config_error(path, 0, "add_combined: libcrypto has no digest ", missing);
    if (bad)
        return CKR_GENERAL_ERROR;
    pin_tries_left = emu.pin_max_tries;

    int fd = open(record, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) {
        say("p11tls interposer: cannot open record file %s: %s\n", record, strerror(errno));
        return CKR_GENERAL_ERROR;
    }
    void *lib = dlopen(module, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        say("p11tls interposer: cannot load real module %s: %s\n", module, dlerror());
        close(fd);
        return CKR_GENERAL_ERROR;
    }
    CK_C_GetFunctionList get;
    *(void **)&get = dlsym(lib, "C_GetFunctionList"); /* the POSIX idiom for dlsym */
    CK_FUNCTION_LIST_PTR list = NULL;
    const char *why = NULL;
    if (!get)
        why = "it has no C_GetFunctionList";
    else if (get == C_GetFunctionList)
        why = "it is this interposer (it would call itself)";
    else if (get(&list) != CKR_OK || !list)
        why = "its C_GetFunctionList failed";
    if (why) {
        say("p11tls interposer: real module %s: %s\n", module, why);
        dlclose(lib);
        close(fd);
        return CKR_GENERAL_ERROR;
    }
    real_lib = lib;
    real_get_function_list = get;
    record_fd = fd;
    atomic_store(&real, list); /* never unloaded: modules often dislike dlclose */
    return CKR_OK;
}

/* Loads once; later calls return CKR_OK at once.  A failure is not kept: the
 * next call tries again (and C_Initialize reports it). */
static CK_RV ensure_loaded(int quiet)
{
    if (atomic_load(&real))
        return CKR_OK;
    pthread_mutex_lock(&load_lock);
    load_quiet = quiet;
    CK_RV rv = atomic_load(&real) ? CKR_OK : load();
    load_quiet = 0;
    pthread_mutex_unlock(&load_lock);
    return rv;
}

/* ------------------------------------------ sessions and emulated operations */

/*
 * A signing or verifying operation whose calls the interposer shapes: a
 * combined mechanism (hashed here, CKM_ECDSA below) and/or an input limit.
 * Other operations keep no state.  Only the thread using the session touches
 * an operation's contents (PKCS#11 forbids concurrent use of one session);
 * its lifetime is counted: the session table holds one reference, and each
 * call using it one more (op_get/op_put), so a C_Finalize or
 * C_CloseAllSessions in another thread never frees one still in use.
 */
enum op_kind { OP_SIGN, OP_VERIFY };

struct op {
    enum op_kind kind;
    const EVP_MD *md;  /* combined: the digest, with ctx; NULL: forwarded as is */
    EVP_MD_CTX *ctx;
    int limited;
    CK_ULONG total;    /* input so far (C_SignUpdate parts) */
    int fed;           /* the real module has seen a C_SignUpdate */
    int refs;          /* under sess_lock */
};

/*
 * The sessions the client opened, with their slot (so C_CloseAllSessions acts
 * on that slot's sessions only), their emulated operations and the template
 * of a C_FindObjectsInit in progress.  Under sess_lock.  A session used but
 * not opened through here gets an entry of unknown slot.
 */
#define SLOT_UNKNOWN CK_UNAVAILABLE_INFORMATION

struct sess {
    CK_SESSION_HANDLE s;
    CK_SLOT_ID slot;
    struct op *op[2];   /* by op_kind */
    struct kvals find;  /* what every object the search returns has */
    struct sess *next;
};
static struct sess *sessions;

static struct sess **sess_where(CK_SESSION_HANDLE s)
{
    struct sess **p = &sessions;
    while (*p && (*p)->s != s)
        p = &(*p)->next;
    return p;
}

/* The entry of s, made if need be (NULL: no memory); under sess_lock. */
static struct sess *sess_entry(CK_SESSION_HANDLE s)
{
    struct sess **p = sess_where(s);
    if (!*p && (*p = calloc(1, sizeof **p))) {
        (*p)->s = s;
        (*p)->slot = SLOT_UNKNOWN;
        (*p)->find = (struct kvals)KVALS_NONE;
    }
    return *p;
}

static void op_free(struct op *o)
{
    EVP_MD_CTX_free(o->ctx);
    free(o);
}

/* Drops one reference (NULL: none); the last one frees. */
static void op_put(struct op *o)
{
    if (!o)
        return;
    pthread_mutex_lock(&sess_lock);
    int last = --o->refs == 0;
    pthread_mutex_unlock(&sess_lock);
    if (last)
        op_free(o);
}

/* The operation of that kind in progress in s, with a reference for the
 * caller (op_put when done), or NULL. */
static struct op *op_get(CK_SESSION_HANDLE s, enum op_kind kind)
{
    pthread_mutex_lock(&sess_lock);
    struct sess *e = *sess_where(s);
    struct op *o = e ? e->op[kind] : NULL;
    if (o)
        o->refs++;
    pthread_mutex_unlock(&sess_lock);
    return o;
}

/* The operation `o` of s is over (if it is still the current one). */
static void op_end(CK_SESSION_HANDLE s, struct op *o)
{
    struct op *gone = NULL;
    pthread_mutex_lock(&sess_lock);
    struct sess *e = *sess_where(s);
    if (e && o && e->op[o->kind] == o) {
        e->op[o->kind] = NULL;
        gone = o;
    }
    pthread_mutex_unlock(&sess_lock);
    op_put(gone);
}

/* Whatever operation of that kind s has is over. */
static void op_forget(CK_SESSION_HANDLE s, enum op_kind kind)
{
    struct op *gone = NULL;
    pthread_mutex_lock(&sess_lock);
    struct sess *e = *sess_where(s);
    if (e) {
        gone = e->op[kind];
        e->op[kind] = NULL;
    }
    pthread_mutex_unlock(&sess_lock);
    op_put(gone);
}

/* o (one reference, the table's) becomes the operation of s; 0: no memory. */
static int op_start(CK_SESSION_HANDLE s, struct op *o)
{
    struct op *old = NULL;
    pthread_mutex_lock(&sess_lock);
    struct sess *e = sess_entry(s);
    if (e) {
        old = e->op[o->kind];
        e->op[o->kind] = o;
        o->refs = 1;
    }
    pthread_mutex_unlock(&sess_lock);
    op_put(old);
    return e != NULL;
}

/* Frees removed session entries: their operations (once no call uses them),
 * search templates and the session objects known in them. */
static void sess_free_list(struct sess *e)
{
    while (e) {
        struct sess *next = e->next;
        op_put(e->op[OP_SIGN]);
        op_put(e->op[OP_VERIFY]);
        kv_free(&e->find);
        book_forget_where(0, e->s);
        free(e);
        e = next;
    }
}

/* Closed: session s (all 0), every session of `slot` (all 1, s ignored), or
 * every session (all 2). */
static void sess_close(CK_SESSION_HANDLE s, CK_SLOT_ID slot, int all)
{
    struct sess *gone = NULL;
    pthread_mutex_lock(&sess_lock);
    for (struct sess **p = &sessions; *p;) {
        struct sess *e = *p;
        if (all == 2 || (all == 1 && e->slot == slot) || (all == 0 && e->s == s)) {
            *p = e->next;
            e->next = gone;
            gone = e;
        } else {
            p = &e->next;
        }
    }
    pthread_mutex_unlock(&sess_lock);
    sess_free_list(gone);
}

/* A session the client opened (a handle seen before belongs to a closed one). */
static void sess_open(CK_SESSION_HANDLE s, CK_SLOT_ID slot)
{
    sess_close(s, 0, 0);
    pthread_mutex_lock(&sess_lock);
    struct sess *e = sess_entry(s);
    if (e)
        e->slot = slot;
    pthread_mutex_unlock(&sess_lock);
}

/* C_FindObjectsInit succeeded: remember its template (found 0), or
 * C_FindObjects returned objects: they have its values. */
static void sess_find(CK_SESSION_HANDLE s, const CK_ATTRIBUTE *t, CK_ULONG n,
                      const CK_OBJECT_HANDLE *found, CK_ULONG n_found)
{
    struct kvals k = KVALS_NONE;
    kv_template(&k, t, n, NULL); /* outside the lock: it allocates */
    pthread_mutex_lock(&sess_lock);
    struct sess *e = found ? *sess_where(s) : sess_entry(s);
    if (e && !found) {
        kv_free(&e->find);
        e->find = k;
        k = (struct kvals)KVALS_NONE;
    } else if (e) {
        kv_copy(&k, &e->find);
    }
    pthread_mutex_unlock(&sess_lock);
    for (CK_ULONG i = 0; found && i < n_found; i++) {
        struct kvals each;
        kv_copy(&each, &k);
        book_put(found[i], s, 0, &each);
    }
    kv_free(&k);
}

/* C_FindObjectsFinal: the search is over. */
static void sess_find_end(CK_SESSION_HANDLE s)
{
    struct kvals k = KVALS_NONE;
    pthread_mutex_lock(&sess_lock);
    struct sess *e = *sess_where(s);
    if (e) {
        k = e->find;
        e->find = (struct kvals)KVALS_NONE;
    }
    pthread_mutex_unlock(&sess_lock);
    kv_free(&k);
}

/* Whether a C_Sign/C_SignFinal result ends the operation (PKCS#11 2.40 5.2):
 * all do except a size query that succeeded and CKR_BUFFER_TOO_SMALL. */
static int sign_ends(CK_RV rv, const void *out)
{
    return !(rv == CKR_BUFFER_TOO_SMALL || (rv == CKR_OK && !out));
}

/*
 * Ends the real module's signing operation after the interposer failed a call
 * of it (such a failure ends the operation for the client, so the real module
 * must not keep it open): it is finished into a scratch buffer and the result
 * thrown away.  Not recorded: the record shows the client's view.
 */
static void end_real_sign(CK_FUNCTION_LIST_PTR r, CK_SESSION_HANDLE s, int fed)
{
    CK_BYTE scratch[1024], none = 0, *buf = scratch;
    CK_ULONG len = sizeof scratch;
    for (int attempt = 0; attempt < 2; attempt++) {
        CK_RV rv = fed ? REAL(SignFinal, s, buf, &len) : REAL(Sign, s, &none, 0, buf, &len);
        if (rv != CKR_BUFFER_TOO_SMALL || buf != scratch || !(buf = malloc(len)))
            break;
    }
    if (buf != scratch)
        free(buf);
}

/* C_SignInit / C_VerifyInit: hidden, combined (CKM_ECDSA below) or forwarded;
 * state is kept when the operation is emulated. */
static CK_RV op_init(CK_FUNCTION_LIST_PTR r, struct call *c, enum op_kind kind,
                     CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k)
{
    if (HIDDEN(m))
        return refuse_hidden(c);
    const EVP_MD *md = m ? combined_md(m->mechanism) : NULL;
    int limited = kind == OP_SIGN && m && limit_applies(m->mechanism);
    CK_MECHANISM below = { CKM_ECDSA, NULL, 0 };
    CK_MECHANISM_PTR used = md ? &below : m;
    if (md)
        c->emulated = EMU_COMBINED;
    CK_RV rv = kind == OP_SIGN ? REAL(SignInit, s, used, k) : REAL(VerifyInit, s, used, k);
    if (rv != CKR_OK || !(md || limited))
        return rv;
    op_forget(s, kind); /* left over from an operation ended out of our sight */
    struct op *o = calloc(1, sizeof *o);
    if (o && md && (!(o->ctx = EVP_MD_CTX_new()) || !EVP_DigestInit_ex(o->ctx, md, NULL))) {
        op_free(o);
        o = NULL;
    }
    if (o) {
        o->kind = kind;
        o->md = md;
        o->limited = limited;
        if (op_start(s, o))
            return CKR_OK;
        op_free(o);
    }
    if (kind == OP_SIGN)
        end_real_sign(r, s, 0);
    else if (r->C_Verify) /* ends the real verification */
        r->C_Verify(s, (CK_BYTE_PTR) "", 0, (CK_BYTE_PTR) "", 0);
    return CKR_HOST_MEMORY;
}

/* The digest of everything given so far (the context stays usable). */
static int op_digest(struct op *o, unsigned char *d, unsigned int *dl)
{
    EVP_MD_CTX *copy = EVP_MD_CTX_new();
    int ok = copy && EVP_MD_CTX_copy_ex(copy, o->ctx) && EVP_DigestFinal_ex(copy, d, dl);
    EVP_MD_CTX_free(copy);
    return ok;
}

/* The call goes past the input limit: fail it and end the operation. */
static CK_RV over_limit(CK_FUNCTION_LIST_PTR r, struct call *c, struct op *o,
                        CK_SESSION_HANDLE s)
{
    c->emulated = EMU_LIMIT;
    end_real_sign(r, s, o->fed);
    op_end(s, o);
    return emu.over_limit_rv;
}

/* Ends an emulated operation on an error of our own (bad arguments, no memory). */
static CK_RV op_fail(CK_FUNCTION_LIST_PTR r, struct op *o, CK_SESSION_HANDLE s, CK_RV rv)
{
    if (o->kind == OP_SIGN)
        end_real_sign(r, s, o->fed);
    else if (r->C_Verify)
        r->C_Verify(s, (CK_BYTE_PTR) "", 0, (CK_BYTE_PTR) "", 0);
    op_end(s, o);
    return rv;
}

/* Totals of the operation for the record of a call that hit the limit. */
struct sign_note { CK_ULONG total; CK_ULONG real_in; };

static CK_RV op_sign(CK_FUNCTION_LIST_PTR r, struct call *c, struct op *o, CK_SESSION_HANDLE s,
                     CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR out_len,
                     struct sign_note *note)
{
    note->total = in_len;
    /* A size query passes: it hands the token no data to sign. */
    if (o->limited && out && in_len > emu.max_input)
        return over_limit(r, c, o, s);
    CK_RV rv;
    if (o->md) {
        unsigned char d[EVP_MAX_MD_SIZE];
        unsigned int dl = 0;
        if (!in && in_len)
            return op_fail(r, o, s, CKR_ARGUMENTS_BAD);
        if (!EVP_Digest(in ? in : (CK_BYTE_PTR) "", in_len, d, &dl, o->md, NULL))
            return op_fail(r, o, s, CKR_GENERAL_ERROR);
        c->emulated = EMU_COMBINED;
        note->real_in = dl;
        rv = REAL(Sign, s, d, dl, out, out_len);
    } else {
        rv = REAL(Sign, s, in, in_len, out, out_len);
    }
    if (sign_ends(rv, out))
        op_end(s, o);
    return rv;
}

static CK_RV op_sign_update(CK_FUNCTION_LIST_PTR r, struct call *c, struct op *o,
                            CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len,
                            struct sign_note *note)
{
    note->total = o->total + in_len;
    if (o->limited && in_len > emu.max_input - o->total) /* total <= max here */
        return over_limit(r, c, o, s);
    if (o->md) {
        if (!in && in_len)
            return op_fail(r, o, s, CKR_ARGUMENTS_BAD);
        if (!EVP_DigestUpdate(o->ctx, in, in_len))
            return op_fail(r, o, s, CKR_GENERAL_ERROR);
        o->total += in_len;
        c->emulated = EMU_COMBINED;
        return CKR_OK;
    }
    CK_RV rv = REAL(SignUpdate, s, in, in_len);
    o->total += in_len;
    o->fed = 1;
    if (rv != CKR_OK)
        op_end(s, o);
    return rv;
}

static CK_RV op_sign_final(CK_FUNCTION_LIST_PTR r, struct call *c, struct op *o,
                           CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG_PTR out_len,
                           struct sign_note *note)
{
    CK_RV rv;
    note->total = o->total;
    if (o->md) {
        unsigned char d[EVP_MAX_MD_SIZE];
        unsigned int dl = 0;
        if (!op_digest(o, d, &dl))
            return op_fail(r, o, s, CKR_HOST_MEMORY);
        c->emulated = EMU_COMBINED;
        note->real_in = dl;
        rv = REAL(Sign, s, d, dl, out, out_len); /* a size query keeps the operation */
    } else {
        rv = REAL(SignFinal, s, out, out_len);
    }
    if (sign_ends(rv, out))
        op_end(s, o);
    return rv;
}

/* multipart = no: C_SignUpdate is refused, and the refusal ends the operation. */
static CK_RV refuse_update(CK_FUNCTION_LIST_PTR r, struct call *c, CK_SESSION_HANDLE s)
{
    struct op *o = op_get(s, OP_SIGN);
    c->emulated = EMU_NO_MULTIPART;
    end_real_sign(r, s, o && o->fed);
    op_forget(s, OP_SIGN);
    op_put(o);
    return CKR_FUNCTION_NOT_SUPPORTED;
}

/* Combined verification: C_Verify/C_VerifyFinal verify the digest below. */
static CK_RV op_verify(CK_FUNCTION_LIST_PTR r, struct call *c, struct op *o, CK_SESSION_HANDLE s,
                       CK_BYTE_PTR data, CK_ULONG len, int final, CK_BYTE_PTR sig,
                       CK_ULONG sig_len, struct sign_note *note)
{
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int dl = 0;
    if (!final && !data && len)
        return op_fail(r, o, s, CKR_ARGUMENTS_BAD);
    if (final ? !op_digest(o, d, &dl)
              : !EVP_Digest(data ? data : (CK_BYTE_PTR) "", len, d, &dl, o->md, NULL))
        return op_fail(r, o, s, CKR_GENERAL_ERROR);
    c->emulated = EMU_COMBINED;
    note->real_in = dl;
    CK_RV rv = REAL(Verify, s, d, dl, sig, sig_len);
    op_end(s, o); /* C_Verify always ends the operation */
    return rv;
}

static CK_RV op_verify_update(CK_FUNCTION_LIST_PTR r, struct call *c, struct op *o,
                              CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len)
{
    if (!in && in_len)
        return op_fail(r, o, s, CKR_ARGUMENTS_BAD);
    if (!EVP_DigestUpdate(o->ctx, in, in_len))
        return op_fail(r, o, s, CKR_GENERAL_ERROR);
    c->emulated = EMU_COMBINED;
    return CKR_OK;
}

/* fail_after struck a signing call: like any failure, it ends the operation,
 * so the real module's one is ended too. */
static void sign_fault_end(CK_FUNCTION_LIST_PTR r, struct call *c, CK_SESSION_HANDLE s,
                           struct op *o)
{
    if (c->emulated != EMU_FAIL_AFTER)
        return;
    end_real_sign(r, s, o && o->fed);
    op_forget(s, OP_SIGN);
}

/* ,"real_in_len" and, past the limit, ,"limit_bytes","op_in_len". */
static void j_sign_note(struct call *c, const struct sign_note *note)
{
    if (note->real_in != CK_UNAVAILABLE_INFORMATION)
        j_ulong(&c->j, "real_in_len", note->real_in);
    if (c->emulated == EMU_LIMIT) {
        j_ulong(&c->j, "limit_bytes", emu.max_input);
        j_ulong(&c->j, "op_in_len", note->total);
    }
}

#define NOTE { CK_UNAVAILABLE_INFORMATION, CK_UNAVAILABLE_INFORMATION }


/* ------------------------------------------- mechanisms, objects and PIN */

/*
 * C_GetMechanismList as the emulated token answers it: the real list without
 * the hidden mechanisms, plus the added combined ones (when the real token
 * has CKM_ECDSA to do them with), with the usual size-query protocol.
 */
static CK_RV mech_list(CK_FUNCTION_LIST_PTR r, struct call *c, CK_SLOT_ID slot,
                       CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count, CK_ULONG *real_count)
{
    if (!count)
        return CKR_ARGUMENTS_BAD;
    c->emulated = EMU_MECH_LIST;
    CK_MECHANISM_TYPE *all = NULL;
    CK_ULONG n = 0;
    CK_RV rv;
    for (int attempt = 0; attempt < 3; attempt++) { /* the list may grow in between */
        if ((rv = REAL(GetMechanismList, slot, NULL, &n)) != CKR_OK)
            return rv;
        CK_MECHANISM_TYPE *grown = realloc(all, (n + COUNT(combinable) + 1) * sizeof *all);
        if (!grown) {
            free(all);
            return CKR_HOST_MEMORY;
        }
        all = grown;
        if ((rv = REAL(GetMechanismList, slot, all, &n)) != CKR_BUFFER_TOO_SMALL)
            break;
    }
    if (rv != CKR_OK) {
        free(all);
        return rv;
    }
    *real_count = n;
    int has_ecdsa = mech_in(all, n, CKM_ECDSA);
    CK_ULONG kept = 0;
    for (CK_ULONG i = 0; i < n; i++)
        if (!is_hidden(all[i]) && !combined_md(all[i]))
            all[kept++] = all[i];
    for (size_t i = 0; i < COUNT(combinable); i++)
        if (has_ecdsa && emu.combined[i] && !is_hidden(combinable[i].mech))
            all[kept++] = combinable[i].mech;
    if (list && *count < kept)
        rv = CKR_BUFFER_TOO_SMALL;
    else if (list)
        memcpy(list, all, kept * sizeof *all);
    *count = kept;
    free(all);
    return rv;
}

/* C_GetMechanismInfo of an added combined mechanism: CKM_ECDSA's. */
static CK_RV combined_info(CK_FUNCTION_LIST_PTR r, struct call *c, CK_SLOT_ID slot,
                           CK_MECHANISM_INFO_PTR info)
{
    c->emulated = EMU_COMBINED;
    return REAL(GetMechanismInfo, slot, CKM_ECDSA, info);
}

/* A CK_ULONG attribute of a template: 1 and *v when present and well formed. */
static int template_ulong(const CK_ATTRIBUTE *t, CK_ULONG n, CK_ATTRIBUTE_TYPE type, CK_ULONG *v)
{
    for (CK_ULONG i = 0; t && i < n; i++)
        if (t[i].type == type && t[i].pValue && t[i].ulValueLen == sizeof *v) {
            memcpy(v, t[i].pValue, sizeof *v);
            return 1;
        }
    return 0;
}

/* The refuse_create rule that matches a C_CreateObject template, or NULL. */
static const struct refuse_rule *refusing_rule(const CK_ATTRIBUTE *t, CK_ULONG n)
{
    CK_ULONG cls, type;
    if (!emu.n_refuse || !template_ulong(t, n, CKA_CLASS, &cls))
        return NULL;
    int has_type = template_ulong(t, n, CKA_KEY_TYPE, &type);
    for (size_t i = 0; i < emu.n_refuse; i++) {
        const struct refuse_rule *rule = &emu.refuse[i];
        if (rule->cls == cls && (rule->any_type || (has_type && rule->type == type)))
            return rule;
    }
    return NULL;
}

static CK_RV refuse_create(struct call *c, const struct refuse_rule *rule)
{
    c->emulated = EMU_REFUSE;
    return rule->rv;
}

/* Token flags with the user-PIN bits of the emulated counter instead of the
 * real token's. */
static CK_FLAGS pin_flags(CK_FLAGS real_flags)
{
    pthread_mutex_lock(&pin_lock);
    CK_ULONG left = pin_tries_left;
    pthread_mutex_unlock(&pin_lock);
    CK_FLAGS f = real_flags
                 & ~(CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_LOCKED);
    if (left < emu.pin_max_tries)
        f |= CKF_USER_PIN_COUNT_LOW; /* a wrong PIN since the last success */
    if (left == 1)
        f |= CKF_USER_PIN_FINAL_TRY;
    if (left == 0)
        f |= CKF_USER_PIN_LOCKED;
    return f;
}

/* Back to max_tries; 1 when that changed the counter. */
static int pin_reset(void)
{
    pthread_mutex_lock(&pin_lock);
    int changed = pin_tries_left != emu.pin_max_tries;
    pin_tries_left = emu.pin_max_tries;
    pthread_mutex_unlock(&pin_lock);
    return changed;
}

/* C_Login of the user with the emulated counter.  The lock is held across the
 * real call so that concurrent wrong PINs are each counted. */
static CK_RV pin_login(CK_FUNCTION_LIST_PTR r, struct call *c, CK_SESSION_HANDLE s,
                       CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len, CK_ULONG *left)
{
    CK_RV rv;
    pthread_mutex_lock(&pin_lock);
    if (pin_tries_left == 0) {
        c->emulated = EMU_PIN_LOCKED; /* the real module never sees this PIN */
        rv = CKR_PIN_LOCKED;
    } else {
        rv = REAL(Login, s, user, pin, pin_len);
        if (rv == CKR_PIN_INCORRECT) {
            pin_tries_left--;
            c->emulated = EMU_PIN_COUNTER;
        } else if (rv == CKR_OK && pin_tries_left != emu.pin_max_tries) {
            pin_tries_left = emu.pin_max_tries;
            c->emulated = EMU_PIN_COUNTER;
        }
    }
    *left = pin_tries_left;
    pthread_mutex_unlock(&pin_lock);
    return rv;
}

/* ------------------------------------------------------- general purpose */

static CK_RV ip_Initialize(CK_VOID_PTR args)
{
    CK_RV loaded = ensure_loaded(0);
    if (loaded != CKR_OK)
        return loaded;
    START(Initialize);
    FORWARD(Initialize, args);
    if (rv == CKR_OK) { /* a new application instance (after a fork, in the child) */
        book_clear();
        sess_close(0, 0, 2);
    }
    jb_key(J, "init_flags");
    if (args)
        jb_fmt(J, "\"0x%lx\"", ((CK_C_INITIALIZE_ARGS *)args)->flags);
    else
        jb_puts(J, "null");
    END;
}

static CK_RV ip_Finalize(CK_VOID_PTR reserved)
{
    START(Finalize);
    FORWARD(Finalize, reserved);
    if (rv == CKR_OK) {
        book_clear();
        sess_close(0, 0, 2);
    }
    END;
}

static CK_RV ip_GetInfo(CK_INFO_PTR info)
{
    START(GetInfo);
    FORWARD(GetInfo, info);
    END;
}

/* ------------------------------------------------- slots and tokens */

static CK_RV ip_GetSlotList(CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count)
{
    CK_ULONG cap = count ? *count : 0;
    START(GetSlotList);
    c.query = !list;
    FORWARD(GetSlotList, present, list, count);
    jb_key(J, "token_present");
    jb_puts(J, present ? "true" : "false");
    j_out(J, list, cap, count);
    END;
}

static CK_RV ip_GetSlotInfo(CK_SLOT_ID slot, CK_SLOT_INFO_PTR info)
{
    START(GetSlotInfo);
    FORWARD(GetSlotInfo, slot, info);
    j_ulong(J, "slot", slot);
    END;
}

static CK_RV ip_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info)
{
    START(GetTokenInfo);
    FORWARD(GetTokenInfo, slot, info);
    j_ulong(J, "slot", slot);
    if (rv == CKR_OK && info && (emu.pin_max_tries || emu.token_pin_flags)) {
        j_hexflags(J, "real_token_flags", info->flags);
        if (emu.pin_max_tries)
            info->flags = pin_flags(info->flags);
        info->flags |= emu.token_pin_flags;
        c.emulated = EMU_PIN_FLAGS;
    }
    if (rv == CKR_OK && info && (emu.token_model[0] || emu.token_manufacturer[0])) {
        if (emu.token_model[0])
            memcpy(info->model, emu.token_model, sizeof info->model);
        if (emu.token_manufacturer[0])
            memcpy(info->manufacturerID, emu.token_manufacturer, sizeof info->manufacturerID);
        c.emulated = "token_info";
    }
    if (rv == CKR_OK && info && emu.token_firmware_set) {
        info->firmwareVersion = emu.token_firmware;
        c.emulated = "token_info";
    }
    if (rv == CKR_OK && info && emu.token_write_protected) {
        info->flags |= CKF_WRITE_PROTECTED;
        c.emulated = "token_info";
    }
    if (rv == CKR_OK && info)
        j_hexflags(J, "token_flags", info->flags); /* as the client sees them */
    END;
}

static CK_RV ip_WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID_PTR slot, CK_VOID_PTR reserved)
{
    START(WaitForSlotEvent);
    FORWARD(WaitForSlotEvent, flags, slot, reserved);
    j_hexflags(J, "flags", flags);
    j_handle_out(J, "slot", rv, slot);
    END;
}

static CK_RV ip_GetMechanismList(CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count)
{
    CK_ULONG cap = count ? *count : 0;
    CK_ULONG real_count = CK_UNAVAILABLE_INFORMATION;
    START(GetMechanismList);
    c.query = !list;
    TIMED(emu.mech_list_changed ? mech_list(r, &c, slot, list, count, &real_count)
                                : REAL(GetMechanismList, slot, list, count));
    j_ulong(J, "slot", slot);
    j_out(J, list, cap, count);
    if (real_count != CK_UNAVAILABLE_INFORMATION)
        j_ulong(J, "real_count", real_count);
    if (rv == CKR_OK && list && count) { /* what the client was offered */
        jb_key(J, "mechanisms");
        jb_puts(J, "[");
        for (CK_ULONG i = 0; i < *count && i < cap; i++) {
            if (i)
                jb_puts(J, ",");
            jb_name(J, TABLE(mech_names), list[i]);
        }
        jb_puts(J, "]");
    }
    END;
}

static CK_RV ip_GetMechanismInfo(CK_SLOT_ID slot, CK_MECHANISM_TYPE type,
                                 CK_MECHANISM_INFO_PTR info)
{
    START(GetMechanismInfo);
    TIMED(is_hidden(type) ? refuse_hidden(&c)
          : combined_md(type) ? combined_info(r, &c, slot, info)
          : REAL(GetMechanismInfo, slot, type, info));
    j_ulong(J, "slot", slot);
    jb_key(J, "mechanism");
    jb_puts(J, "{\"name\":");
    jb_name(J, TABLE(mech_names), type);
    jb_fmt(J, ",\"value\":%lu}", type);
    if (rv == CKR_OK && info) {
        jb_fmt(J, ",\"info\":{\"min_key\":%lu,\"max_key\":%lu,\"flags\":\"0x%lx\"}",
               info->ulMinKeySize, info->ulMaxKeySize, info->flags);
    }
    END;
}

static CK_RV ip_InitToken(CK_SLOT_ID slot, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len,
                          CK_UTF8CHAR_PTR label)
{
    START(InitToken);
    FORWARD(InitToken, slot, pin, pin_len, label);
    j_ulong(J, "slot", slot);
    jb_key(J, "pin_len");
    pin ? jb_fmt(J, "%lu", pin_len) : jb_puts(J, "null");
    jb_key(J, "label");
    label ? jb_str(J, label, 32) : jb_puts(J, "null");
    END;
}

static CK_RV ip_InitPIN(CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len)
{
    START(InitPIN);
    FORWARD(InitPIN, s, pin, pin_len);
    if (rv == CKR_OK && emu.pin_max_tries && pin_reset())
        c.emulated = EMU_PIN_COUNTER; /* the SO unlocked the user PIN */
    SESSION(s);
    jb_key(J, "pin_len");
    pin ? jb_fmt(J, "%lu", pin_len) : jb_puts(J, "null");
    END;
}

static CK_RV ip_SetPIN(CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR old_pin, CK_ULONG old_len,
                       CK_UTF8CHAR_PTR new_pin, CK_ULONG new_len)
{
    START(SetPIN);
    FORWARD(SetPIN, s, old_pin, old_len, new_pin, new_len);
    SESSION(s);
    jb_key(J, "old_pin_len");
    old_pin ? jb_fmt(J, "%lu", old_len) : jb_puts(J, "null");
    jb_key(J, "new_pin_len");
    new_pin ? jb_fmt(J, "%lu", new_len) : jb_puts(J, "null");
    END;
}

/* ------------------------------------------------------------- sessions */

static CK_RV ip_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify,
                            CK_SESSION_HANDLE_PTR session)
{
    START(OpenSession);
    FORWARD(OpenSession, slot, flags, app, notify, session);
    if (rv == CKR_OK && session)
        sess_open(*session, slot);
    j_ulong(J, "slot", slot);
    j_hexflags(J, "flags", flags);
    j_handle_out(J, "session", rv, session);
    END;
}

static CK_RV ip_CloseSession(CK_SESSION_HANDLE s)
{
    START(CloseSession);
    FORWARD(CloseSession, s);
    if (rv == CKR_OK) /* its operations, search and session objects are gone */
        sess_close(s, 0, 0);
    SESSION(s);
    END;
}

static CK_RV ip_CloseAllSessions(CK_SLOT_ID slot)
{
    START(CloseAllSessions);
    FORWARD(CloseAllSessions, slot);
    if (rv == CKR_OK) /* that slot's sessions only */
        sess_close(0, slot, 1);
    j_ulong(J, "slot", slot);
    END;
}

static CK_RV ip_GetSessionInfo(CK_SESSION_HANDLE s, CK_SESSION_INFO_PTR info)
{
    START(GetSessionInfo);
    FORWARD(GetSessionInfo, s, info);
    SESSION(s);
    if (rv == CKR_OK && info)
        j_ulong(J, "state", info->state);
    END;
}

static CK_RV ip_GetOperationState(CK_SESSION_HANDLE s, CK_BYTE_PTR state, CK_ULONG_PTR len)
{
    CK_ULONG cap = len ? *len : 0;
    START(GetOperationState);
    c.query = !state;
    FORWARD(GetOperationState, s, state, len);
    SESSION(s);
    j_out(J, state, cap, len);
    END;
}

static CK_RV ip_SetOperationState(CK_SESSION_HANDLE s, CK_BYTE_PTR state, CK_ULONG len,
                                  CK_OBJECT_HANDLE enc_key, CK_OBJECT_HANDLE auth_key)
{
    START(SetOperationState);
    FORWARD(SetOperationState, s, state, len, enc_key, auth_key);
    SESSION(s);
    j_ulong(J, "in_len", len);
    END;
}

static CK_RV ip_Login(CK_SESSION_HANDLE s, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin,
                      CK_ULONG pin_len)
{
    CK_ULONG left = 0;
    START(Login); /* emu is read only after START: load() publishes it with `real` */
    /* The user PIN is counted; the SO PIN is the real token's business. */
    int counted = emu.pin_max_tries && (user == CKU_USER || user == CKU_CONTEXT_SPECIFIC);
    TIMED(counted ? pin_login(r, &c, s, user, pin, pin_len, &left)
                  : REAL(Login, s, user, pin, pin_len));
    SESSION(s);
    jb_key(J, "user_type");
    jb_name(J, TABLE(user_names), user);
    jb_key(J, "pin_len"); /* the length only, never the PIN */
    pin ? jb_fmt(J, "%lu", pin_len) : jb_puts(J, "null");
    if (counted)
        j_ulong(J, "pin_tries_left", left);
    END;
}

static CK_RV ip_Logout(CK_SESSION_HANDLE s)
{
    START(Logout);
    FORWARD(Logout, s);
    SESSION(s);
    END;
}

/* ---------------------------------------------------------------- objects */

static CK_RV ip_CreateObject(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n,
                             CK_OBJECT_HANDLE_PTR obj)
{
    START(CreateObject);
    const struct refuse_rule *rule = refusing_rule(t, n);
    TIMED(rule ? refuse_create(&c, rule) : REAL(CreateObject, s, t, n, obj));
    if (rv == CKR_OK && obj)
        book_new(*obj, s, CK_UNAVAILABLE_INFORMATION, NULL, t, n, NULL, 0);
    SESSION(s);
    j_template(J, "template", t, n, 1, NULL);
    j_handle_out(J, "object", rv, obj);
    END;
}

static CK_RV ip_CopyObject(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_PTR t,
                           CK_ULONG n, CK_OBJECT_HANDLE_PTR new_obj)
{
    START(CopyObject);
    FORWARD(CopyObject, s, obj, t, n, new_obj);
    if (rv == CKR_OK && new_obj)
        book_copy(obj, *new_obj, s, t, n);
    SESSION(s);
    j_ulong(J, "object", obj);
    j_template(J, "template", t, n, 1, NULL);
    j_handle_out(J, "new_object", rv, new_obj);
    END;
}

static CK_RV ip_DestroyObject(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj)
{
    START(DestroyObject);
    FORWARD(DestroyObject, s, obj);
    if (rv == CKR_OK)
        book_forget(obj);
    SESSION(s);
    j_ulong(J, "object", obj);
    END;
}

static CK_RV ip_GetObjectSize(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj, CK_ULONG_PTR size)
{
    START(GetObjectSize);
    FORWARD(GetObjectSize, s, obj, size);
    SESSION(s);
    j_ulong(J, "object", obj);
    j_handle_out(J, "size", rv, size);
    END;
}

static CK_RV ip_GetAttributeValue(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_PTR t,
                                  CK_ULONG n)
{
    CK_ULONG caps[TEMPLATE_MAX];
    for (CK_ULONG i = 0; t && i < n && i < TEMPLATE_MAX; i++)
        caps[i] = t[i].ulValueLen;
    START(GetAttributeValue);
    FORWARD(GetAttributeValue, s, obj, t, n);
    if (attr_ok(rv)) { /* what the client now knows of the object */
        struct kvals k = KVALS_NONE;
        kv_template(&k, t, n < TEMPLATE_MAX ? n : TEMPLATE_MAX, caps);
        book_put(obj, s, 0, &k);
    }
    SESSION(s);
    j_ulong(J, "object", obj);
    j_template(J, "template", t, n, attr_ok(rv), caps);
    END;
}

static CK_RV ip_SetAttributeValue(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_PTR t,
                                  CK_ULONG n)
{
    START(SetAttributeValue);
    FORWARD(SetAttributeValue, s, obj, t, n);
    if (rv == CKR_OK) {
        struct kvals k = KVALS_NONE;
        kv_template(&k, t, n, NULL);
        book_put(obj, s, 0, &k);
    }
    SESSION(s);
    j_ulong(J, "object", obj);
    j_template(J, "template", t, n, 1, NULL);
    END;
}

static CK_RV ip_FindObjectsInit(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
    START(FindObjectsInit);
    FORWARD(FindObjectsInit, s, t, n);
    if (rv == CKR_OK)
        sess_find(s, t, n, NULL, 0);
    SESSION(s);
    j_template(J, "template", t, n, 1, NULL);
    END;
}

static CK_RV ip_FindObjects(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE_PTR objs, CK_ULONG max,
                            CK_ULONG_PTR count)
{
    START(FindObjects);
    FORWARD(FindObjects, s, objs, max, count);
    if (rv == CKR_OK && objs && count)
        sess_find(s, NULL, 0, objs, *count < max ? *count : max);
    SESSION(s);
    j_ulong(J, "max", max);
    j_handle_out(J, "count", rv, count);
    END;
}

static CK_RV ip_FindObjectsFinal(CK_SESSION_HANDLE s)
{
    START(FindObjectsFinal);
    FORWARD(FindObjectsFinal, s);
    if (rv == CKR_OK)
        sess_find_end(s);
    SESSION(s);
    END;
}

/* ------------------------------------------------- cryptographic operations */

/* C_xInit(session, mechanism, key): mechanism, params and the key used. */
#define WRAP_INIT(name)                                                      \
    static CK_RV ip_##name(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k) \
    {                                                                        \
        START(name);                                                         \
        char *key = book_describe(k);                                   \
        TIMED(HIDDEN(m) ? refuse_hidden(&c) : REAL(name, s, m, k));          \
        SESSION(s);                                                          \
        j_mech(J, m);                                                        \
        j_key(J, k, key);                                                    \
        END;                                                                 \
    }

/* C_x(session, in, in_len, out, &out_len): one part in, one part out. */
#define WRAP_IN_OUT(name)                                                    \
    static CK_RV ip_##name(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, \
                           CK_BYTE_PTR out, CK_ULONG_PTR out_len)           \
    {                                                                        \
        CK_ULONG cap = out_len ? *out_len : 0;                               \
        START(name);                                                         \
        c.query = !out;                                                      \
        FORWARD(name, s, in, in_len, out, out_len);                          \
        SESSION(s);                                                          \
        j_ulong(J, "in_len", in_len);                                        \
        j_out(J, out, cap, out_len);                                         \
        END;                                                                 \
    }

/* C_xFinal(session, out, &out_len) and the like. */
#define WRAP_OUT(name)                                                       \
    static CK_RV ip_##name(CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG_PTR out_len) \
    {                                                                        \
        CK_ULONG cap = out_len ? *out_len : 0;                               \
        START(name);                                                         \
        c.query = !out;                                                      \
        FORWARD(name, s, out, out_len);                                      \
        SESSION(s);                                                          \
        j_out(J, out, cap, out_len);                                         \
        END;                                                                 \
    }

/* C_xUpdate(session, in, in_len) and the like: `field` names the length. */
#define WRAP_IN(name, field)                                                 \
    static CK_RV ip_##name(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len) \
    {                                                                        \
        START(name);                                                         \
        FORWARD(name, s, in, in_len);                                        \
        SESSION(s);                                                          \
        j_ulong(J, field, in_len);                                           \
        END;                                                                 \
    }

WRAP_INIT(EncryptInit)
WRAP_IN_OUT(Encrypt)
WRAP_IN_OUT(EncryptUpdate)
WRAP_OUT(EncryptFinal)

WRAP_INIT(DecryptInit)
WRAP_IN_OUT(Decrypt)
WRAP_IN_OUT(DecryptUpdate)
WRAP_OUT(DecryptFinal)

WRAP_IN_OUT(Digest)
WRAP_IN(DigestUpdate, "in_len")
WRAP_OUT(DigestFinal)

WRAP_INIT(SignRecoverInit)
WRAP_IN_OUT(SignRecover)

WRAP_INIT(VerifyRecoverInit)
WRAP_IN_OUT(VerifyRecover) /* in: the signature, out: the recovered data */

WRAP_IN_OUT(DigestEncryptUpdate)
WRAP_IN_OUT(DecryptDigestUpdate)
WRAP_IN_OUT(SignEncryptUpdate)
WRAP_IN_OUT(DecryptVerifyUpdate)

WRAP_IN(SeedRandom, "in_len")

static CK_RV ip_DigestInit(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m)
{
    START(DigestInit);
    TIMED(HIDDEN(m) ? refuse_hidden(&c) : REAL(DigestInit, s, m));
    SESSION(s);
    j_mech(J, m);
    END;
}

static CK_RV ip_DigestKey(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k)
{
    START(DigestKey);
    char *key = book_describe(k);
    FORWARD(DigestKey, s, k);
    SESSION(s);
    j_key(J, k, key);
    END;
}

/*
 * Signing and verifying: forwarded unless the operation is emulated (an added
 * combined mechanism, an input limit, multipart = no); see "operations being
 * emulated".  The record keeps the client's mechanism and lengths.
 */
static CK_RV ip_SignInit(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k)
{
    START(SignInit);
    char *key = book_describe(k);
    TIMED(op_init(r, &c, OP_SIGN, s, m, k));
    SESSION(s);
    j_mech(J, m);
    j_key(J, k, key);
    if (c.emulated == EMU_COMBINED)
        jb_puts(J, ",\"real_mechanism\":\"CKM_ECDSA\"");
    END;
}

static CK_RV ip_Sign(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out,
                     CK_ULONG_PTR out_len)
{
    CK_ULONG cap = out_len ? *out_len : 0;
    struct sign_note note = NOTE;
    START(Sign);
    c.query = !out;
    struct op *o = op_get(s, OP_SIGN);
    TIMED(o ? op_sign(r, &c, o, s, in, in_len, out, out_len, &note)
            : REAL(Sign, s, in, in_len, out, out_len));
    sign_fault_end(r, &c, s, o);
    SESSION(s);
    j_ulong(J, "in_len", in_len);
    j_out(J, out, cap, out_len);
    j_sign_note(&c, &note);
    op_put(o);
    END;
}

static CK_RV ip_SignUpdate(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len)
{
    struct sign_note note = NOTE;
    START(SignUpdate);
    struct op *o = emu.no_multipart ? NULL : op_get(s, OP_SIGN);
    TIMED(emu.no_multipart ? refuse_update(r, &c, s)
          : o ? op_sign_update(r, &c, o, s, in, in_len, &note)
          : REAL(SignUpdate, s, in, in_len));
    sign_fault_end(r, &c, s, o);
    SESSION(s);
    j_ulong(J, "in_len", in_len);
    j_sign_note(&c, &note);
    op_put(o);
    END;
}

static CK_RV ip_SignFinal(CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG_PTR out_len)
{
    CK_ULONG cap = out_len ? *out_len : 0;
    struct sign_note note = NOTE;
    START(SignFinal);
    c.query = !out;
    struct op *o = op_get(s, OP_SIGN);
    TIMED(o ? op_sign_final(r, &c, o, s, out, out_len, &note) : REAL(SignFinal, s, out, out_len));
    sign_fault_end(r, &c, s, o);
    SESSION(s);
    j_out(J, out, cap, out_len);
    j_sign_note(&c, &note);
    op_put(o);
    END;
}

static CK_RV ip_VerifyInit(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k)
{
    START(VerifyInit);
    char *key = book_describe(k);
    TIMED(op_init(r, &c, OP_VERIFY, s, m, k));
    SESSION(s);
    j_mech(J, m);
    j_key(J, k, key);
    if (c.emulated == EMU_COMBINED)
        jb_puts(J, ",\"real_mechanism\":\"CKM_ECDSA\"");
    END;
}

static CK_RV ip_Verify(CK_SESSION_HANDLE s, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR sig,
                       CK_ULONG sig_len)
{
    struct sign_note note = NOTE;
    START(Verify);
    struct op *o = op_get(s, OP_VERIFY);
    TIMED(o ? op_verify(r, &c, o, s, data, len, 0, sig, sig_len, &note)
            : REAL(Verify, s, data, len, sig, sig_len));
    SESSION(s);
    j_ulong(J, "in_len", len);
    j_ulong(J, "sig_len", sig_len);
    j_sign_note(&c, &note);
    op_put(o);
    END;
}

static CK_RV ip_VerifyUpdate(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len)
{
    START(VerifyUpdate);
    struct op *o = op_get(s, OP_VERIFY);
    TIMED(o ? op_verify_update(r, &c, o, s, in, in_len) : REAL(VerifyUpdate, s, in, in_len));
    SESSION(s);
    j_ulong(J, "in_len", in_len);
    op_put(o);
    END;
}

static CK_RV ip_VerifyFinal(CK_SESSION_HANDLE s, CK_BYTE_PTR sig, CK_ULONG sig_len)
{
    struct sign_note note = NOTE;
    START(VerifyFinal);
    struct op *o = op_get(s, OP_VERIFY);
    TIMED(o ? op_verify(r, &c, o, s, NULL, 0, 1, sig, sig_len, &note)
            : REAL(VerifyFinal, s, sig, sig_len));
    SESSION(s);
    j_ulong(J, "sig_len", sig_len);
    j_sign_note(&c, &note);
    op_put(o);
    END;
}

static CK_RV ip_GenerateRandom(CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG len)
{
    START(GenerateRandom);
    FORWARD(GenerateRandom, s, out, len);
    SESSION(s);
    j_ulong(J, "out_len", len);
    END;
}

/* ----------------------------------------------------------------- keys */

static CK_RV ip_GenerateKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR t,
                            CK_ULONG n, CK_OBJECT_HANDLE_PTR key)
{
    START(GenerateKey);
    TIMED(HIDDEN(m) ? refuse_hidden(&c) : REAL(GenerateKey, s, m, t, n, key));
    if (rv == CKR_OK && key)
        book_new(*key, s, CKO_SECRET_KEY, m, t, n, NULL, 0);
    SESSION(s);
    j_mech(J, m);
    j_template(J, "template", t, n, 1, NULL);
    j_handle_out(J, "object", rv, key);
    END;
}

static CK_RV ip_GenerateKeyPair(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR pub_t,
                                CK_ULONG pub_n, CK_ATTRIBUTE_PTR priv_t, CK_ULONG priv_n,
                                CK_OBJECT_HANDLE_PTR pub, CK_OBJECT_HANDLE_PTR priv)
{
    START(GenerateKeyPair);
    TIMED(HIDDEN(m) ? refuse_hidden(&c)
                    : REAL(GenerateKeyPair, s, m, pub_t, pub_n, priv_t, priv_n, pub, priv));
    if (rv == CKR_OK && pub && priv) {
        book_new(*pub, s, CKO_PUBLIC_KEY, m, pub_t, pub_n, NULL, 0);
        book_new(*priv, s, CKO_PRIVATE_KEY, m, priv_t, priv_n, pub_t, pub_n);
    }
    SESSION(s);
    j_mech(J, m);
    j_template(J, "public_template", pub_t, pub_n, 1, NULL);
    j_template(J, "private_template", priv_t, priv_n, 1, NULL);
    j_handle_out(J, "public_key", rv, pub);
    j_handle_out(J, "private_key", rv, priv);
    END;
}

static CK_RV ip_WrapKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE wrapping,
                        CK_OBJECT_HANDLE k, CK_BYTE_PTR out, CK_ULONG_PTR out_len)
{
    CK_ULONG cap = out_len ? *out_len : 0;
    START(WrapKey);
    c.query = !out;
    char *key = book_describe(wrapping);
    TIMED(HIDDEN(m) ? refuse_hidden(&c) : REAL(WrapKey, s, m, wrapping, k, out, out_len));
    SESSION(s);
    j_mech(J, m);
    j_key(J, wrapping, key);
    j_ulong(J, "object", k);
    j_out(J, out, cap, out_len);
    END;
}

static CK_RV ip_UnwrapKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE unwrapping,
                          CK_BYTE_PTR in, CK_ULONG in_len, CK_ATTRIBUTE_PTR t, CK_ULONG n,
                          CK_OBJECT_HANDLE_PTR obj)
{
    START(UnwrapKey);
    char *key = book_describe(unwrapping);
    TIMED(HIDDEN(m) ? refuse_hidden(&c) : REAL(UnwrapKey, s, m, unwrapping, in, in_len, t, n, obj));
    if (rv == CKR_OK && obj)
        book_new(*obj, s, CK_UNAVAILABLE_INFORMATION, NULL, t, n, NULL, 0);
    SESSION(s);
    j_mech(J, m);
    j_key(J, unwrapping, key);
    j_ulong(J, "in_len", in_len);
    j_template(J, "template", t, n, 1, NULL);
    j_handle_out(J, "object", rv, obj);
    END;
}

static CK_RV ip_DeriveKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE base,
                          CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR obj)
{
    START(DeriveKey);
    char *key = book_describe(base);
    TIMED(HIDDEN(m) ? refuse_hidden(&c) : REAL(DeriveKey, s, m, base, t, n, obj));
    if (rv == CKR_OK && obj)
        book_new(*obj, s, CK_UNAVAILABLE_INFORMATION, NULL, t, n, NULL, 0);
    SESSION(s);
    j_mech(J, m);
    j_key(J, base, key);
    j_template(J, "template", t, n, 1, NULL);
    j_handle_out(J, "object", rv, obj);
    END;
}

/* ------------------------------------------------------ parallel functions */

static CK_RV ip_GetFunctionStatus(CK_SESSION_HANDLE s)
{
    START(GetFunctionStatus);
    FORWARD(GetFunctionStatus, s);
    SESSION(s);
    END;
}

static CK_RV ip_CancelFunction(CK_SESSION_HANDLE s)
{
    START(CancelFunction);
    FORWARD(CancelFunction, s);
    SESSION(s);
    END;
}

/* ------------------------------------------------ PKCS#11 3.0 functions */

/*
 * Forwarded to the real module's 3.x list and recorded like the others; no
 * emulation setting applies.  They are reachable only through the 3.0 list,
 * which is handed out only when the real module has a 3.x list.
 */
#define START3(name)                                                     \
    START(name);                                                         \
    CK_FUNCTION_LIST_3_0 *r3 = atomic_load(&real3)
#define REAL3(name, ...)                                                 \
    (r3 && r3->C_##name ? r3->C_##name(__VA_ARGS__) : CKR_FUNCTION_NOT_SUPPORTED)
#define FORWARD3(name, ...) TIMED(REAL3(name, __VA_ARGS__))

/* A length whose pointer may be NULL: the length, or null. */
static void j_len_if(jbuf *b, const char *key, const void *p, CK_ULONG len)
{
    jb_key(b, key);
    p ? jb_fmt(b, "%lu", len) : jb_puts(b, "null");
}

/* C_GetInfo of the 3.0 list (see LIST_2_40_ENTRIES): recorded as C_GetInfo. */
static CK_RV ip_GetInfo_3_0(CK_INFO_PTR info)
{
    START3(GetInfo);
    FORWARD3(GetInfo, info);
    END;
}

static CK_RV ip_LoginUser(CK_SESSION_HANDLE s, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin,
                          CK_ULONG pin_len, CK_UTF8CHAR_PTR username, CK_ULONG username_len)
{
    START3(LoginUser);
    FORWARD3(LoginUser, s, user, pin, pin_len, username, username_len);
    SESSION(s);
    jb_key(J, "user_type");
    jb_name(J, TABLE(user_names), user);
    j_len_if(J, "pin_len", pin, pin_len); /* lengths only, never the PIN */
    j_len_if(J, "username_len", username, username_len);
    END;
}

static CK_RV ip_SessionCancel(CK_SESSION_HANDLE s, CK_FLAGS flags)
{
    START3(SessionCancel);
    FORWARD3(SessionCancel, s, flags);
    if (rv == CKR_OK && (flags & CKF_SIGN)) /* the real operations are gone */
        op_forget(s, OP_SIGN);
    if (rv == CKR_OK && (flags & CKF_VERIFY))
        op_forget(s, OP_VERIFY);
    SESSION(s);
    j_hexflags(J, "flags", flags);
    END;
}

/* C_Message{Encrypt,Decrypt,Sign,Verify}Init: mechanism, params and key. */
#define WRAP3_INIT(name)                                                     \
    static CK_RV ip_##name(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k) \
    {                                                                        \
        START3(name);                                                        \
        char *key = book_describe(k);                                   \
        FORWARD3(name, s, m, k);                                             \
        SESSION(s);                                                          \
        j_mech(J, m);                                                        \
        j_key(J, k, key);                                                    \
        END;                                                                 \
    }

/* C_Message{Encrypt,Decrypt,Sign,Verify}Final(session). */
#define WRAP3_FINAL(name)                                                    \
    static CK_RV ip_##name(CK_SESSION_HANDLE s)                              \
    {                                                                        \
        START3(name);                                                        \
        FORWARD3(name, s);                                                   \
        SESSION(s);                                                          \
        END;                                                                 \
    }

/* C_{Encrypt,Decrypt}Message(session, param, aad, in, out): one message. */
#define WRAP3_CRYPT(name)                                                    \
    static CK_RV ip_##name(CK_SESSION_HANDLE s, CK_VOID_PTR param, CK_ULONG param_len, \
                           CK_BYTE_PTR aad, CK_ULONG aad_len, CK_BYTE_PTR in,       \
                           CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR out_len)   \
    {                                                                        \
        CK_ULONG cap = out_len ? *out_len : 0;                               \
        START3(name);                                                        \
        c.query = !out;                                                      \
        FORWARD3(name, s, param, param_len, aad, aad_len, in, in_len, out, out_len); \
        SESSION(s);                                                          \
        j_ulong(J, "param_len", param_len);                                  \
        j_ulong(J, "aad_len", aad_len);                                      \
        j_ulong(J, "in_len", in_len);                                        \
        j_out(J, out, cap, out_len);                                         \
        END;                                                                 \
    }

/* C_{Encrypt,Decrypt}MessageBegin(session, param, aad). */
#define WRAP3_CRYPT_BEGIN(name)                                              \
    static CK_RV ip_##name(CK_SESSION_HANDLE s, CK_VOID_PTR param, CK_ULONG param_len, \
                           CK_BYTE_PTR aad, CK_ULONG aad_len)               \
    {                                                                        \
        START3(name);                                                        \
        FORWARD3(name, s, param, param_len, aad, aad_len);                   \
        SESSION(s);                                                          \
        j_ulong(J, "param_len", param_len);                                  \
        j_ulong(J, "aad_len", aad_len);                                      \
        END;                                                                 \
    }

/* C_{Encrypt,Decrypt}MessageNext(session, param, in, out, flags). */
#define WRAP3_CRYPT_NEXT(name)                                               \
    static CK_RV ip_##name(CK_SESSION_HANDLE s, CK_VOID_PTR param, CK_ULONG param_len, \
                           CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out,        \
                           CK_ULONG_PTR out_len, CK_FLAGS flags)             \
    {                                                                        \
        CK_ULONG cap = out_len ? *out_len : 0;                               \
        START3(name);                                                        \
        c.query = !out;                                                      \
        FORWARD3(name, s, param, param_len, in, in_len, out, out_len, flags); \
        SESSION(s);                                                          \
        j_ulong(J, "param_len", param_len);                                  \
        j_ulong(J, "in_len", in_len);                                        \
        j_out(J, out, cap, out_len);                                         \
        j_hexflags(J, "flags", flags);                                       \
        END;                                                                 \
    }

/* C_SignMessage, and C_SignMessageNext (whose signature pointers are NULL
 * for every part but the last: then no out_buf/out_len is written). */
#define WRAP3_SIGN(name)                                                     \
    static CK_RV ip_##name(CK_SESSION_HANDLE s, CK_VOID_PTR param, CK_ULONG param_len, \
                           CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR sig,        \
                           CK_ULONG_PTR sig_len)                             \
    {                                                                        \
        CK_ULONG cap = sig_len ? *sig_len : 0;                               \
        START3(name);                                                        \
        c.query = sig_len && !sig;                                           \
        FORWARD3(name, s, param, param_len, in, in_len, sig, sig_len);       \
        SESSION(s);                                                          \
        j_ulong(J, "param_len", param_len);                                  \
        j_ulong(J, "in_len", in_len);                                        \
        if (sig || sig_len)                                                  \
            j_out(J, sig, cap, sig_len);                                     \
        END;                                                                 \
    }

/* C_VerifyMessage, and C_VerifyMessageNext (signature NULL but for the last part). */
#define WRAP3_VERIFY(name)                                                   \
    static CK_RV ip_##name(CK_SESSION_HANDLE s, CK_VOID_PTR param, CK_ULONG param_len, \
                           CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR sig,        \
                           CK_ULONG sig_len)                                 \
    {                                                                        \
        START3(name);                                                        \
        FORWARD3(name, s, param, param_len, in, in_len, sig, sig_len);       \
        SESSION(s);                                                          \
        j_ulong(J, "param_len", param_len);                                  \
        j_ulong(J, "in_len", in_len);                                        \
        j_len_if(J, "sig_len", sig, sig_len);                                \
        END;                                                                 \
    }

/* C_{Sign,Verify}MessageBegin(session, param). */
#define WRAP3_BEGIN(name)                                                    \
    static CK_RV ip_##name(CK_SESSION_HANDLE s, CK_VOID_PTR param, CK_ULONG param_len) \
    {                                                                        \
        START3(name);                                                        \
        FORWARD3(name, s, param, param_len);                                 \
        SESSION(s);                                                          \
        j_ulong(J, "param_len", param_len);                                  \
        END;                                                                 \
    }

WRAP3_INIT(MessageEncryptInit)
WRAP3_CRYPT(EncryptMessage)
WRAP3_CRYPT_BEGIN(EncryptMessageBegin)
WRAP3_CRYPT_NEXT(EncryptMessageNext)
WRAP3_FINAL(MessageEncryptFinal)

WRAP3_INIT(MessageDecryptInit)
WRAP3_CRYPT(DecryptMessage)
WRAP3_CRYPT_BEGIN(DecryptMessageBegin)
WRAP3_CRYPT_NEXT(DecryptMessageNext)
WRAP3_FINAL(MessageDecryptFinal)

WRAP3_INIT(MessageSignInit)
WRAP3_SIGN(SignMessage)
WRAP3_BEGIN(SignMessageBegin)
WRAP3_SIGN(SignMessageNext)
WRAP3_FINAL(MessageSignFinal)

WRAP3_INIT(MessageVerifyInit)
WRAP3_VERIFY(VerifyMessage)
WRAP3_BEGIN(VerifyMessageBegin)
WRAP3_VERIFY(VerifyMessageNext)
WRAP3_FINAL(MessageVerifyFinal)

/* ------------------------------------------------------------ entry points */

/*
 * The 2.40 wrappers: the whole 2.40 list and the start of the 3.0 list.  But
 * C_GetInfo: modules answer it per interface (OpenSC 0.23: cryptokiVersion
 * 2.20 in its 2.x list, 3.0 in its 3.0 list), so the 3.0 list has its own,
 * recorded the same way, forwarded to the real 3.x list.  The other 67
 * entries forward to the real C_GetFunctionList list in both lists.
 */
#define LIST_2_40_ENTRIES(get_info) \
    .C_Initialize = ip_Initialize, .C_Finalize = ip_Finalize, .C_GetInfo = get_info, \
    .C_GetFunctionList = C_GetFunctionList, .C_GetSlotList = ip_GetSlotList, \
    .C_GetSlotInfo = ip_GetSlotInfo, .C_GetTokenInfo = ip_GetTokenInfo, \
    .C_GetMechanismList = ip_GetMechanismList, .C_GetMechanismInfo = ip_GetMechanismInfo, \
    .C_InitToken = ip_InitToken, .C_InitPIN = ip_InitPIN, .C_SetPIN = ip_SetPIN, \
    .C_OpenSession = ip_OpenSession, .C_CloseSession = ip_CloseSession, \
    .C_CloseAllSessions = ip_CloseAllSessions, .C_GetSessionInfo = ip_GetSessionInfo, \
    .C_GetOperationState = ip_GetOperationState, \
    .C_SetOperationState = ip_SetOperationState, .C_Login = ip_Login, .C_Logout = ip_Logout, \
    .C_CreateObject = ip_CreateObject, .C_CopyObject = ip_CopyObject, \
    .C_DestroyObject = ip_DestroyObject, .C_GetObjectSize = ip_GetObjectSize, \
    .C_GetAttributeValue = ip_GetAttributeValue, \
    .C_SetAttributeValue = ip_SetAttributeValue, .C_FindObjectsInit = ip_FindObjectsInit, \
    .C_FindObjects = ip_FindObjects, .C_FindObjectsFinal = ip_FindObjectsFinal, \
    .C_EncryptInit = ip_EncryptInit, .C_Encrypt = ip_Encrypt, \
    .C_EncryptUpdate = ip_EncryptUpdate, .C_EncryptFinal = ip_EncryptFinal, \
    .C_DecryptInit = ip_DecryptInit, .C_Decrypt = ip_Decrypt, \
    .C_DecryptUpdate = ip_DecryptUpdate, .C_DecryptFinal = ip_DecryptFinal, \
    .C_DigestInit = ip_DigestInit, .C_Digest = ip_Digest, .C_DigestUpdate = ip_DigestUpdate, \
    .C_DigestKey = ip_DigestKey, .C_DigestFinal = ip_DigestFinal, .C_SignInit = ip_SignInit, \
    .C_Sign = ip_Sign, .C_SignUpdate = ip_SignUpdate, .C_SignFinal = ip_SignFinal, \
    .C_SignRecoverInit = ip_SignRecoverInit, .C_SignRecover = ip_SignRecover, \
    .C_VerifyInit = ip_VerifyInit, .C_Verify = ip_Verify, .C_VerifyUpdate = ip_VerifyUpdate, \
    .C_VerifyFinal = ip_VerifyFinal, .C_VerifyRecoverInit = ip_VerifyRecoverInit, \
    .C_VerifyRecover = ip_VerifyRecover, .C_DigestEncryptUpdate = ip_DigestEncryptUpdate, \
    .C_DecryptDigestUpdate = ip_DecryptDigestUpdate, \
    .C_SignEncryptUpdate = ip_SignEncryptUpdate, \
    .C_DecryptVerifyUpdate = ip_DecryptVerifyUpdate, .C_GenerateKey = ip_GenerateKey, \
    .C_GenerateKeyPair = ip_GenerateKeyPair, .C_WrapKey = ip_WrapKey, \
    .C_UnwrapKey = ip_UnwrapKey, .C_DeriveKey = ip_DeriveKey, .C_SeedRandom = ip_SeedRandom, \
    .C_GenerateRandom = ip_GenerateRandom, .C_GetFunctionStatus = ip_GetFunctionStatus, \
    .C_CancelFunction = ip_CancelFunction, .C_WaitForSlotEvent = ip_WaitForSlotEvent,

static CK_FUNCTION_LIST function_list = {
    .version = { 2, 40 }, /* not CRYPTOKI_VERSION_*: a 3.x header would say 3.x */
    LIST_2_40_ENTRIES(ip_GetInfo)
};

static CK_FUNCTION_LIST_3_0 function_list_3_0 = {
    .version = { 3, 0 },
    LIST_2_40_ENTRIES(ip_GetInfo_3_0)
    .C_GetInterfaceList = C_GetInterfaceList,
    .C_GetInterface = C_GetInterface,
    .C_LoginUser = ip_LoginUser,
    .C_SessionCancel = ip_SessionCancel,
    .C_MessageEncryptInit = ip_MessageEncryptInit,
    .C_EncryptMessage = ip_EncryptMessage,
    .C_EncryptMessageBegin = ip_EncryptMessageBegin,
    .C_EncryptMessageNext = ip_EncryptMessageNext,
    .C_MessageEncryptFinal = ip_MessageEncryptFinal,
    .C_MessageDecryptInit = ip_MessageDecryptInit,
    .C_DecryptMessage = ip_DecryptMessage,
    .C_DecryptMessageBegin = ip_DecryptMessageBegin,
    .C_DecryptMessageNext = ip_DecryptMessageNext,
    .C_MessageDecryptFinal = ip_MessageDecryptFinal,
    .C_MessageSignInit = ip_MessageSignInit,
    .C_SignMessage = ip_SignMessage,
    .C_SignMessageBegin = ip_SignMessageBegin,
    .C_SignMessageNext = ip_SignMessageNext,
    .C_MessageSignFinal = ip_MessageSignFinal,
    .C_MessageVerifyInit = ip_MessageVerifyInit,
    .C_VerifyMessage = ip_VerifyMessage,
    .C_VerifyMessageBegin = ip_VerifyMessageBegin,
    .C_VerifyMessageNext = ip_VerifyMessageNext,
    .C_MessageVerifyFinal = ip_MessageVerifyFinal,
};

/* Not recorded: it runs before the configuration has been read. */
EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
    if (!list)
        return CKR_ARGUMENTS_BAD;
    *list = &function_list;
    return CKR_OK;
}

/*
 * The interfaces on offer (under load_lock), loading and discovering first if
 * need be; loading is quiet here: C_Initialize reports a configuration that
 * does not load, and meanwhile the 2.40 interface is offered.  *fwd is the
 * real C_GetInterface when the real module has a 3.x list, else NULL.
 */
static CK_ULONG offered(CK_INTERFACE **offer, CK_C_GetInterface *fwd)
{
    static CK_INTERFACE only_2_40 = { IFACE_NAME, &function_list, 0 };
    int saved = errno;
    CK_RV rv = ensure_loaded(1);
    pthread_mutex_lock(&load_lock);
    if (rv == CKR_OK)
        discover();
    CK_ULONG n = rv == CKR_OK ? n_interfaces : 1;
    *offer = rv == CKR_OK ? interfaces : &only_2_40;
    *fwd = rv == CKR_OK ? real_get_interface : NULL;
    pthread_mutex_unlock(&load_lock);
    errno = saved;
    return n;
}

/* Not recorded, like C_GetFunctionList. */
EXPORT CK_RV C_GetInterfaceList(CK_INTERFACE_PTR list, CK_ULONG_PTR count)
{
    if (!count)
        return CKR_ARGUMENTS_BAD;
    CK_INTERFACE *offer;
    CK_C_GetInterface fwd;
    CK_ULONG n = offered(&offer, &fwd);
    if (list && *count < n) {
        *count = n;
        return CKR_BUFFER_TOO_SMALL;
    }
    if (list)
        memcpy(list, offer, n * sizeof *list);
    *count = n;
    return CKR_OK;
}

/*
 * Not recorded.  The first interface on offer that has the name (NULL: any),
 * the version (NULL: any) and every flag asked for.  None: with a real 3.x
 * module, its own answer to the same request gives the error code (a request
 * it grants, e.g. its 2.20 list or a vendor interface, is not on offer here:
 * CKR_ARGUMENTS_BAD); else CKR_ARGUMENTS_BAD.
 */
EXPORT CK_RV C_GetInterface(CK_UTF8CHAR_PTR name, CK_VERSION_PTR version,
                            CK_INTERFACE_PTR_PTR found, CK_FLAGS flags)
{
    CK_INTERFACE *offer;
    CK_C_GetInterface fwd;
    CK_ULONG n = offered(&offer, &fwd);
    for (CK_ULONG i = 0; found && i < n; i++) {
        const CK_VERSION *v = offer[i].pFunctionList;
        if (name && strcmp((const char *)name, (const char *)offer[i].pInterfaceName))
            continue;
        if (version && (version->major != v->major || version->minor != v->minor))
            continue;
        if ((offer[i].flags & flags) != flags)
            continue;
        *found = &offer[i];
        return CKR_OK;
    }
    CK_INTERFACE_PTR ignored = NULL;
    CK_RV rv = fwd ? fwd(name, version, found ? &ignored : NULL, flags) : CKR_ARGUMENTS_BAD;
    return rv != CKR_OK ? rv : CKR_ARGUMENTS_BAD;
}
