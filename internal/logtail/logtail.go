// Package logtail cuts logs to their last lines for test failure messages.
package logtail

import "strings"

// Lines returns the last n lines of b, without the final newline.
func Lines(b []byte, n int) string {
	s := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return strings.Join(s, "\n")
}
