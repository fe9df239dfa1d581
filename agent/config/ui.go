package config

import (
	"fmt"
	"net/url"
	"strings"
)

// FrameAncestors are --ui-frame-ancestors' origins, checked by Validate.
func (c Config) FrameAncestors() []string { return strings.Fields(c.UIFrameAncestors) }

// validateUI checks the web page's settings. The frame ancestors go into the page's
// Content-Security-Policy header, so each must be a bare origin: a scheme and a host, nothing
// that could end the directive or add another.
func (c Config) validateUI() error {
	if !c.UI && c.UIFrameAncestors != "" {
		return fmt.Errorf("%w: --ui-frame-ancestors is for the web page, which --ui=false turns off", ErrInvalid)
	}
	if c.UI && c.UIFrameAncestors != "" && !c.Gateway {
		return fmt.Errorf("%w: --ui-frame-ancestors needs the gateway (--gateway=true), which serves the page", ErrInvalid)
	}
	for _, o := range c.FrameAncestors() {
		if err := checkOrigin(o); err != nil {
			return fmt.Errorf("%w: --ui-frame-ancestors %q: %w", ErrInvalid, o, err)
		}
	}
	return nil
}

func checkOrigin(o string) error {
	u, err := url.Parse(o)
	switch {
	case err != nil || strings.ContainsAny(o, ";,'\"\\"):
		return fmt.Errorf("not an origin such as https://ondemand.example.edu")
	case u.Scheme != "https" && u.Scheme != "http":
		return fmt.Errorf("give the scheme, https:// or http://")
	case u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
		return fmt.Errorf("give a scheme and a host only (an origin), such as https://ondemand.example.edu")
	}
	return nil
}
