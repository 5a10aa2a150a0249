//! Non-blocking DNS: a sans-IO stub resolver over UDP, plus /etc/hosts and /etc/resolv.conf.
