//! MQTT 5 reason codes (spec 2.4) and QoS.

/// Quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(u8)]
pub enum QoS {
    /// At most once.
    #[default]
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// Parses a QoS value; 3 and above are invalid.
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

macro_rules! reason_codes {
    ($($name:ident = $val:expr, $doc:expr;)*) => {
        /// An MQTT 5 reason code. Some values have two names in the spec (0x00 is Success,
        /// Normal disconnection and Granted QoS 0); they share one variant here.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum ReasonCode {
            $(#[doc = $doc] $name = $val,)*
        }

        impl ReasonCode {
            /// Parses a reason code byte (any packet type).
            pub fn from_u8(v: u8) -> Option<ReasonCode> {
                match v {
                    $($val => Some(ReasonCode::$name),)*
                    _ => None,
                }
            }
        }
    };
}

reason_codes! {
    Success = 0x00, "Success / Normal disconnection / Granted QoS 0.";
    GrantedQoS1 = 0x01, "Granted QoS 1.";
    GrantedQoS2 = 0x02, "Granted QoS 2.";
    DisconnectWithWill = 0x04, "Disconnect with Will Message.";
    NoMatchingSubscribers = 0x10, "No matching subscribers.";
    NoSubscriptionExisted = 0x11, "No subscription existed.";
    ContinueAuthentication = 0x18, "Continue authentication.";
    ReAuthenticate = 0x19, "Re-authenticate.";
    UnspecifiedError = 0x80, "Unspecified error.";
    MalformedPacket = 0x81, "Malformed Packet.";
    ProtocolError = 0x82, "Protocol Error.";
    ImplementationSpecificError = 0x83, "Implementation specific error.";
    UnsupportedProtocolVersion = 0x84, "Unsupported Protocol Version.";
    ClientIdentifierNotValid = 0x85, "Client Identifier not valid.";
    BadUserNameOrPassword = 0x86, "Bad User Name or Password.";
    NotAuthorized = 0x87, "Not authorized.";
    ServerUnavailable = 0x88, "Server unavailable.";
    ServerBusy = 0x89, "Server busy.";
    Banned = 0x8A, "Banned.";
    ServerShuttingDown = 0x8B, "Server shutting down.";
    BadAuthenticationMethod = 0x8C, "Bad authentication method.";
    KeepAliveTimeout = 0x8D, "Keep Alive timeout.";
    SessionTakenOver = 0x8E, "Session taken over.";
    TopicFilterInvalid = 0x8F, "Topic Filter invalid.";
    TopicNameInvalid = 0x90, "Topic Name invalid.";
    PacketIdentifierInUse = 0x91, "Packet Identifier in use.";
    PacketIdentifierNotFound = 0x92, "Packet Identifier not found.";
    ReceiveMaximumExceeded = 0x93, "Receive Maximum exceeded.";
    TopicAliasInvalid = 0x94, "Topic Alias invalid.";
    PacketTooLarge = 0x95, "Packet too large.";
    MessageRateTooHigh = 0x96, "Message rate too high.";
    QuotaExceeded = 0x97, "Quota exceeded.";
    AdministrativeAction = 0x98, "Administrative action.";
    PayloadFormatInvalid = 0x99, "Payload format invalid.";
    RetainNotSupported = 0x9A, "Retain not supported.";
    QoSNotSupported = 0x9B, "QoS not supported.";
    UseAnotherServer = 0x9C, "Use another server.";
    ServerMoved = 0x9D, "Server moved.";
    SharedSubscriptionsNotSupported = 0x9E, "Shared Subscriptions not supported.";
    ConnectionRateExceeded = 0x9F, "Connection rate exceeded.";
    MaximumConnectTime = 0xA0, "Maximum connect time.";
    SubscriptionIdentifiersNotSupported = 0xA1, "Subscription Identifiers not supported.";
    WildcardSubscriptionsNotSupported = 0xA2, "Wildcard Subscriptions not supported.";
}

/// Which packet a reason code appears in, to check it is one that packet may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasonContext {
    /// CONNACK.
    ConnAck,
    /// PUBACK and PUBREC.
    PubAckRec,
    /// PUBREL and PUBCOMP.
    PubRelComp,
    /// SUBACK.
    SubAck,
    /// UNSUBACK.
    UnsubAck,
    /// DISCONNECT.
    Disconnect,
    /// AUTH.
    Auth,
}

impl ReasonCode {
    /// Whether the spec allows this code in `ctx` (tables in sections 3.2.2.2, 3.4.2.1,
    /// 3.5.2.1, 3.6.2.1, 3.7.2.1, 3.9.3, 3.11.3, 3.14.2.1, 3.15.2.1).
    pub fn allowed_in(self, ctx: ReasonContext) -> bool {
        use ReasonCode::*;
        match ctx {
            ReasonContext::ConnAck => matches!(
                self,
                Success
                    | UnspecifiedError
                    | MalformedPacket
                    | ProtocolError
                    | ImplementationSpecificError
                    | UnsupportedProtocolVersion
                    | ClientIdentifierNotValid
                    | BadUserNameOrPassword
                    | NotAuthorized
                    | ServerUnavailable
                    | ServerBusy
                    | Banned
                    | BadAuthenticationMethod
                    | TopicNameInvalid
                    | PacketTooLarge
                    | QuotaExceeded
                    | PayloadFormatInvalid
                    | RetainNotSupported
                    | QoSNotSupported
                    | UseAnotherServer
                    | ServerMoved
                    | ConnectionRateExceeded
            ),
            ReasonContext::PubAckRec => matches!(
                self,
                Success
                    | NoMatchingSubscribers
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicNameInvalid
                    | PacketIdentifierInUse
                    | QuotaExceeded
                    | PayloadFormatInvalid
            ),
            ReasonContext::PubRelComp => matches!(self, Success | PacketIdentifierNotFound),
            ReasonContext::SubAck => matches!(
                self,
                Success
                    | GrantedQoS1
                    | GrantedQoS2
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicFilterInvalid
                    | PacketIdentifierInUse
                    | QuotaExceeded
                    | SharedSubscriptionsNotSupported
                    | SubscriptionIdentifiersNotSupported
                    | WildcardSubscriptionsNotSupported
            ),
            ReasonContext::UnsubAck => matches!(
                self,
                Success
                    | NoSubscriptionExisted
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicFilterInvalid
                    | PacketIdentifierInUse
            ),
            ReasonContext::Disconnect => matches!(
                self,
                Success
                    | DisconnectWithWill
                    | UnspecifiedError
                    | MalformedPacket
                    | ProtocolError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | ServerBusy
                    | ServerShuttingDown
                    | KeepAliveTimeout
                    | SessionTakenOver
                    | TopicFilterInvalid
                    | TopicNameInvalid
                    | ReceiveMaximumExceeded
                    | TopicAliasInvalid
                    | PacketTooLarge
                    | MessageRateTooHigh
                    | QuotaExceeded
                    | AdministrativeAction
                    | PayloadFormatInvalid
                    | RetainNotSupported
                    | QoSNotSupported
                    | UseAnotherServer
                    | ServerMoved
                    | SharedSubscriptionsNotSupported
                    | ConnectionRateExceeded
                    | MaximumConnectTime
                    | SubscriptionIdentifiersNotSupported
                    | WildcardSubscriptionsNotSupported
            ),
            ReasonContext::Auth => matches!(self, Success | ContinueAuthentication | ReAuthenticate),
        }
    }
}
