//! SIP request methods.

/// The methods sipshard treats specially, and `Other` for the rest
/// (extension methods are tokens and are proxied like any other request).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Prack,
    Subscribe,
    Notify,
    Publish,
    Info,
    Refer,
    Message,
    Update,
    Other,
}

impl Method {
    /// Every variant, in declaration order: `Method::ALL[m as usize] == m`.
    pub const ALL: [Method; 15] = [
        Method::Invite,
        Method::Ack,
        Method::Bye,
        Method::Cancel,
        Method::Register,
        Method::Options,
        Method::Prack,
        Method::Subscribe,
        Method::Notify,
        Method::Publish,
        Method::Info,
        Method::Refer,
        Method::Message,
        Method::Update,
        Method::Other,
    ];

    /// The method's token; `other` for extension methods.
    pub fn name(self) -> &'static str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Publish => "PUBLISH",
            Method::Info => "INFO",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Update => "UPDATE",
            Method::Other => "other",
        }
    }

    /// Method names are case-sensitive (RFC 3261 §7.1): `invite` is an
    /// extension method, not INVITE.
    pub fn from_token(token: &[u8]) -> Method {
        match token {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"REGISTER" => Method::Register,
            b"OPTIONS" => Method::Options,
            b"PRACK" => Method::Prack,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"PUBLISH" => Method::Publish,
            b"INFO" => Method::Info,
            b"REFER" => Method::Refer,
            b"MESSAGE" => Method::Message,
            b"UPDATE" => Method::Update,
            _ => Method::Other,
        }
    }

    /// Whether a request with this method, outside a dialog, creates one
    /// and so needs our Record-Route (RFC 3261 §16.6 step 4).
    pub fn creates_dialog(self) -> bool {
        matches!(
            self,
            Method::Invite | Method::Subscribe | Method::Refer | Method::Notify
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Method;

    #[test]
    fn all_is_in_declaration_order_and_names_round_trip() {
        for (i, m) in Method::ALL.iter().enumerate() {
            assert_eq!(*m as usize, i);
            if *m != Method::Other {
                assert_eq!(Method::from_token(m.name().as_bytes()), *m);
            }
        }
    }

    #[test]
    fn case_sensitive() {
        assert_eq!(Method::from_token(b"INVITE"), Method::Invite);
        assert_eq!(Method::from_token(b"invite"), Method::Other);
        assert_eq!(Method::from_token(b"RE%47IST%45R"), Method::Other);
    }
}
