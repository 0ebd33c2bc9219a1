//! The push bodies, as the Node MPR sends them so that existing wallets keep recognising them;
//! only the title and body text are configurable.

use serde_json::{Value, json};

const FCM_TYPE: &str = "https://didcomm.org/push-notifications-fcm";
const APNS_TYPE: &str = "https://didcomm.org/push-notifications-apns";
const COLLAPSE_KEY: &str = "generic-new-messages";

/// What every push says, whoever carries it.
#[derive(Debug, Clone)]
pub struct Notification {
    pub title: String,
    pub body: String,
    /// No visible alert: the app is woken in the background and fetches its messages itself.
    pub data_only: bool,
}

impl Notification {
    /// The FCM HTTP v1 send body `{"message": {...}}`.
    ///
    /// firebase-admin used to add `android.data.contentAvailable: "true"`; FCM v1 has no
    /// `android.data`, so it travels in `data`. Data-only pushes also leave out the Android
    /// notification tag and the APNs alert (with APNs background priority 5), which would
    /// otherwise still show something.
    pub fn fcm_message(&self, token: &str, message_id: &str) -> Value {
        let data = json!({"@type": FCM_TYPE, "message_id": message_id, "contentAvailable": "true"});
        let alert = json!({"title": self.title, "body": self.body});
        let mut aps = json!({"content-available": 1});
        let mut android = json!({"collapse_key": COLLAPSE_KEY, "priority": "high"});
        let mut message = json!({"token": token, "data": data});
        if !self.data_only {
            aps["alert"] = alert.clone();
            android["notification"] = json!({"tag": COLLAPSE_KEY});
            message["notification"] = alert;
        }
        message["android"] = android;
        message["apns"] = json!({
            "headers": {"apns-priority": self.apns_priority(), "apns-collapse-id": "0"},
            "payload": {"aps": aps, "data": {"@type": FCM_TYPE, "message_id": message_id}},
        });
        json!({ "message": message })
    }

    /// The APNs request body.
    pub fn apns_payload(&self, message_id: &str) -> Value {
        let aps = if self.data_only {
            json!({"content-available": 1})
        } else {
            json!({"alert": {"title": self.title, "body": self.body}})
        };
        json!({"aps": aps, "message_id": message_id, "@type": APNS_TYPE})
    }

    /// `apns-push-type`: a background push may not carry an alert.
    pub fn apns_push_type(&self) -> &'static str {
        if self.data_only {
            "background"
        } else {
            "alert"
        }
    }

    /// `apns-priority`: Apple requires 5 for background pushes.
    pub fn apns_priority(&self) -> &'static str {
        if self.data_only { "5" } else { "10" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(data_only: bool) -> Notification {
        Notification {
            title: "Hologram".into(),
            body: "You have new messages".into(),
            data_only,
        }
    }

    #[test]
    fn fcm_message_is_the_node_servers() {
        let message = notification(false).fcm_message("device", "m1");
        let expected = json!({"message": {
            "token": "device",
            "data": {"@type": FCM_TYPE, "message_id": "m1", "contentAvailable": "true"},
            "notification": {"title": "Hologram", "body": "You have new messages"},
            "android": {"collapse_key": "generic-new-messages", "priority": "high",
                        "notification": {"tag": "generic-new-messages"}},
            "apns": {"headers": {"apns-priority": "10", "apns-collapse-id": "0"},
                     "payload": {"aps": {"alert": {"title": "Hologram", "body": "You have new messages"},
                                         "content-available": 1},
                                 "data": {"@type": FCM_TYPE, "message_id": "m1"}}}
        }});
        assert_eq!(message, expected);
    }

    #[test]
    fn fcm_data_only_message_has_no_visible_notification() {
        let message = &notification(true).fcm_message("device", "m1")["message"];
        assert!(message.get("notification").is_none());
        assert!(message["android"].get("notification").is_none());
        assert_eq!(message["android"]["priority"], "high");
        assert_eq!(
            message["apns"]["payload"]["aps"],
            json!({"content-available": 1})
        );
        assert_eq!(message["apns"]["headers"]["apns-priority"], "5");
        assert_eq!(message["data"]["message_id"], "m1");
    }

    #[test]
    fn apns_payloads_and_headers() {
        let alert = notification(false);
        assert_eq!(
            alert.apns_payload("m1"),
            json!({"aps": {"alert": {"title": "Hologram", "body": "You have new messages"}},
                   "message_id": "m1", "@type": APNS_TYPE})
        );
        assert_eq!(
            (alert.apns_push_type(), alert.apns_priority()),
            ("alert", "10")
        );
        let data_only = notification(true);
        assert_eq!(
            data_only.apns_payload("m1"),
            json!({"aps": {"content-available": 1}, "message_id": "m1", "@type": APNS_TYPE})
        );
        assert_eq!(
            (data_only.apns_push_type(), data_only.apns_priority()),
            ("background", "5")
        );
    }
}
