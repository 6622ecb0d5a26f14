"""IANA numbers of IKEv2 (https://www.iana.org/assignments/ikev2-parameters)."""

from __future__ import annotations

from enum import IntEnum

IKE_VERSION = 0x20  # major 2, minor 0
NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 3948 §2.2


class ExchangeType(IntEnum):
    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37


class Flag(IntEnum):
    INITIATOR = 0x08
    VERSION = 0x10
    RESPONSE = 0x20


class PayloadType(IntEnum):
    NONE = 0
    SA = 33
    KE = 34
    IDI = 35
    IDR = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40
    NOTIFY = 41
    DELETE = 42
    VENDOR = 43
    TSI = 44
    TSR = 45
    SK = 46
    CP = 47
    EAP = 48
    SKF = 53


class ProtocolId(IntEnum):
    IKE = 1
    AH = 2
    ESP = 3


class TransformType(IntEnum):
    ENCR = 1
    PRF = 2
    INTEG = 3
    DH = 4
    ESN = 5


class Notify(IntEnum):
    # errors (RFC 7296 §3.10.1)
    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    SINGLE_PAIR_REQUIRED = 34
    NO_ADDITIONAL_SAS = 35
    INTERNAL_ADDRESS_FAILURE = 36
    FAILED_CP_REQUIRED = 37
    TS_UNACCEPTABLE = 38
    INVALID_SELECTORS = 39
    TEMPORARY_FAILURE = 43
    CHILD_SA_NOT_FOUND = 44
    # status
    INITIAL_CONTACT = 16384
    SET_WINDOW_SIZE = 16385
    ADDITIONAL_TS_POSSIBLE = 16386
    IPCOMP_SUPPORTED = 16387
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    USE_TRANSPORT_MODE = 16391
    HTTP_CERT_LOOKUP_SUPPORTED = 16392
    REKEY_SA = 16393
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394
    NON_FIRST_FRAGMENTS_ALSO = 16395
    MOBIKE_SUPPORTED = 16396
    REDIRECT_SUPPORTED = 16406
    IKEV2_FRAGMENTATION_SUPPORTED = 16430
    SIGNATURE_HASH_ALGORITHMS = 16431


class IdType(IntEnum):
    IPV4_ADDR = 1
    FQDN = 2
    RFC822_ADDR = 3
    IPV6_ADDR = 5
    DER_ASN1_DN = 9
    KEY_ID = 11


class AuthMethod(IntEnum):
    RSA_SIG = 1
    PSK = 2
    DSS_SIG = 3
    ECDSA_SHA256_P256 = 9
    ECDSA_SHA384_P384 = 10
    ECDSA_SHA512_P521 = 11
    DIGITAL_SIGNATURE = 14  # RFC 7427


class CertEncoding(IntEnum):
    X509_SIGNATURE = 4


class HashAlgorithm(IntEnum):
    """RFC 7427 §7: values of the SIGNATURE_HASH_ALGORITHMS notify."""

    SHA1 = 1
    SHA2_256 = 2
    SHA2_384 = 3
    SHA2_512 = 4
    IDENTITY = 5


class CfgType(IntEnum):
    REQUEST = 1
    REPLY = 2
    SET = 3
    ACK = 4


class CfgAttr(IntEnum):
    INTERNAL_IP4_ADDRESS = 1
    INTERNAL_IP4_NETMASK = 2
    INTERNAL_IP4_DNS = 3
    INTERNAL_IP4_NBNS = 4
    INTERNAL_IP4_DHCP = 6
    APPLICATION_VERSION = 7
    INTERNAL_IP6_ADDRESS = 8
    INTERNAL_IP6_DNS = 10
    INTERNAL_IP4_SUBNET = 13
    SUPPORTED_ATTRIBUTES = 14
    INTERNAL_IP6_SUBNET = 15
    INTERNAL_DNS_DOMAIN = 25  # RFC 8598 §4 (split DNS)


class TsType(IntEnum):
    IPV4_ADDR_RANGE = 7
    IPV6_ADDR_RANGE = 8
